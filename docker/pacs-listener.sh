#!/bin/sh
# Container entrypoint of the onfh-pacs listener (docker/Dockerfile.pacs): environment -> onfh-pacs overrides.
#   ONFH_PACS_PORT (11112)  ONFH_PACS_AE_TITLE (ONFH_SEG)  ONFH_PACS_SETTLE_S (5)
#   ONFH_PACS_DEST_HOST (required unless ONFH_PACS_DEST_URL)  ONFH_PACS_DEST_PORT (4242)  ONFH_PACS_DEST_AE (ORTHANC)
#   ONFH_PACS_DEST_URL (send by STOW-RS to this DICOMweb URL instead of C-STORE)
#   ONFH_PACS_DEIDENTIFY (false)  ONFH_PACS_STATE (/state: queue, outbox, ledger, audit.jsonl)
# Further key=value arguments are passed on (e.g. infer.provider=cpu). exec: onfh-pacs gets docker stop's SIGTERM.
set -eu
if [ -z "${ONFH_PACS_DEST_HOST:-}" ] && [ -z "${ONFH_PACS_DEST_URL:-}" ]; then
  echo "error: set ONFH_PACS_DEST_HOST (C-STORE destination) or ONFH_PACS_DEST_URL (DICOMweb STOW-RS)" >&2
  exit 1
fi
set -- mode=listen \
  "state_dir=${ONFH_PACS_STATE:-/state}" \
  "deidentify=${ONFH_PACS_DEIDENTIFY:-false}" \
  listen.host=0.0.0.0 \
  "listen.port=${ONFH_PACS_PORT:-11112}" \
  "listen.ae_title=${ONFH_PACS_AE_TITLE:-ONFH_SEG}" \
  "listen.settle_s=${ONFH_PACS_SETTLE_S:-5}" \
  "listen.dest_host=${ONFH_PACS_DEST_HOST:-127.0.0.1}" \
  "listen.dest_port=${ONFH_PACS_DEST_PORT:-4242}" \
  "listen.dest_ae=${ONFH_PACS_DEST_AE:-ORTHANC}" \
  ${ONFH_PACS_DEST_URL:+"listen.dest_url=${ONFH_PACS_DEST_URL}"} \
  "$@"
exec "${ONFH_PACS_BIN:-onfh-pacs}" "$@"
