"""Radiology round trip (``onfh-pacs``): receive studies from a PACS, send DICOM SEG and SR back.

* :mod:`.pull`: query a DICOMweb server (QIDO-RS), retrieve (WADO-RS), store results (STOW-RS);
* :mod:`.listener`: a C-STORE SCP with an on-disk queue, results sent by C-STORE SCU;
* :mod:`.study`: one study folder -> the existing DICOM path of onfh-infer -> SEG + SR ready to send;
* :mod:`onfh_seg.cli.pacs`: the ``onfh-pacs`` entry point (Hydra, configs/pacs.yaml);
* :mod:`.state`: the ledger (what was processed with which model and settings) and the audit log.

Needs the ``pacs`` extra (``pynetdicom``, ``dicomweb-client``).
"""
