"""ONNX Runtime segmentation engine: coarse head localisation, then fine crops per head.

No torch here: numpy, scipy and onnxruntime only (the GPU container has no torch).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from onfh_seg.config import default_model_dir, defaults, resolve_model_dir
from onfh_seg.geometry import covered_box, covering_grid, crop_grid, resample, sampled_box
from onfh_seg.hips import find_heads, select_heads
from onfh_seg.infer.anatomy import check_anatomy, cut_cap_only
from onfh_seg.infer.postprocess import clean_labels
from onfh_seg.infer.providers import choose_providers, with_provider_options
from onfh_seg.infer.search import (
    SEPARATION_MM,
    body_midline_x,
    coarse_peaks,
    far_from,
    first_plausible_pair,
    head_centre,
    in_field_of_view,
    lateral_faces,
    last_resort,
    lattice_candidates,
    mirror_candidate,
    pair_plausible,
    partner_candidates,
    partner_out_of_view,
    plausible_head,
    sphere_candidates,
)
from onfh_seg.infer.windows import (
    class_argmax,
    fine_window,
    keep_main_components,
    lesion_decision,
    probs_on_grid,
    sliding_window,
)
from onfh_seg.preprocess import normalise

log = logging.getLogger("onfh_seg.engine")

MIN_HEAD_ML = 10.0  # a fine crop must contain at least this much femoral head to count as a hip
MAX_SEARCH = 16  # fine-network judgements the head search may spend when the coarse stage finds fewer than two
MAX_SCAN = 48  # and, when it found none, judgements over a lattice of the body (search.lattice_candidates)
# the head search confirms a head with this much in the field of view (5 mL in view: visible; the gate's smallest head)
SEARCH_MIN_HEAD_ML = 5.0
NEAR_MISS = 0.5  # a search crop holding this share of SEARCH_MIN_HEAD_ML in view, not all, is cut again once
RECENTRE_MM = 1.1  # a crop is cut again around its fine head beyond one voxel (until 2026-12-05: 6 mm)


@dataclass
class SegResult:
    """Segmentation of one scan on its own grid."""

    labels: np.ndarray
    mean_confidence: float
    head_centres_ras: list[np.ndarray]
    timings: dict[str, float] = field(default_factory=dict)
    # the head search's record: candidates judged by the fine network and heads it added (``infer.search``)
    search: dict[str, int] = field(default_factory=dict)


class Segmenter:
    """The shipped cascade: ``coarse.onnx`` finds femoral heads, ``fine.onnx`` segments around each."""

    def __init__(self, model_dir: str | Path | None = None, provider: str | None = None, threads: int | None = None,
                 tta: bool | None = None, fast: bool | None = None, window: str | None = None,
                 overlap: float | None = None, lesion_threshold: float | str | None = "model",
                 cuda_tf32: bool | None = None):
        """``None`` means onfh-infer's default (configs/infer.yaml: the shipped model, provider auto, ONNX Runtime's
        thread count, mirroring on, fast off). ``window``/``overlap``/``lesion_threshold`` default to model.json's
        (``fine_window``, ``overlap``, ``lesion_threshold``); the defaults there are "patch", 0.5 and argmax."""
        # function-level import: onnxruntime (heavy) loads only when a model is built, off the onfh-infer start path
        import onnxruntime as ort

        given = (model_dir, provider, threads, tta, fast, cuda_tf32)
        cli = defaults("infer") if None in given else {}  # a run passes every value: no YAML read then
        model_dir = default_model_dir() if model_dir is None else resolve_model_dir(model_dir)
        provider = cli["provider"] if provider is None else provider
        threads = cli["threads"] if threads is None else threads
        tta = cli["tta"] if tta is None else tta
        fast = cli["fast"] if fast is None else fast
        cuda_tf32 = cli["cuda_tf32"] if cuda_tf32 is None else cuda_tf32
        meta_path = model_dir / "model.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"no model found: {meta_path} is missing")
        self.meta = json.loads(meta_path.read_text())
        self.version: str = self.meta["model_version"]
        self.sha256: str = self.meta["fine"]["sha256"]
        providers, why = choose_providers(provider)
        log.info(why)
        self.provider_note = why
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        providers = with_provider_options(providers, bool(cuda_tf32))
        self.coarse = ort.InferenceSession(str(model_dir / self.meta["coarse"]["file"]), so, providers=providers)
        self.fine = ort.InferenceSession(str(model_dir / self.meta["fine"]["file"]), so, providers=providers)
        self.providers = self.fine.get_providers()
        # what ONNX Runtime reports it runs with, e.g. {"CUDAExecutionProvider": {"use_tf32": "0", ...}}
        self.provider_options: dict = {k: dict(v) for k, v in self.fine.get_provider_options().items()}
        self.provider = self.providers[0]  # the one actually used (ONNX Runtime falls back silently)
        self.model_dir = model_dir
        # seconds spent in the parts of the current ``segment`` call (reset there)
        self._clock: dict[str, float] = {"normalise_s": 0.0, "resample_s": 0.0, "networks_s": 0.0}
        # id(probs) of a measured crop: (its centre, its plain passes, its normalised crop image)
        self._measured: dict[int, tuple] = {}
        # threads for resampling (scipy releases the GIL): the ONNX Runtime count, or every usable core
        self.resample_threads = int(threads) if int(threads) > 0 else (
            len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
        self.tta, self.fast = bool(tta) and not fast, bool(fast)
        lt = self.meta.get("lesion_threshold") if lesion_threshold == "model" else lesion_threshold
        self.lesion_threshold: float | None = None if lt is None else float(lt)
        self.window_vox = fine_window(self.meta["fine"], window or self.meta.get("fine_window", "patch"))
        overlap = self.meta.get("overlap", 0.5) if overlap is None else overlap
        if not 0.0 <= float(overlap) < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        self.overlap = float(overlap)

    def _run(self, sess, x: np.ndarray, mirror: bool = False, plain: np.ndarray | None = None) -> np.ndarray:
        """The network on one window; ``mirror``: averaged with its pass on the left-right mirrored window;
        ``plain``: this window's unmirrored output, already computed (its pass is not run again)."""
        t = time.perf_counter()
        p = sess.run(None, {"image": x})[0] if plain is None else plain
        if mirror:  # mirror along the patient left-right axis (axis 0 of the RAS model grid)
            p = 0.5 * (p + sess.run(None, {"image": np.ascontiguousarray(x[:, :, ::-1])})[0][:, :, ::-1])
        self._clock["networks_s"] += time.perf_counter() - t
        return p

    def _resample(self, *args, **kwargs) -> np.ndarray:
        t = time.perf_counter()
        out = resample(*args, threads=self.resample_threads, **kwargs)
        self._clock["resample_s"] += time.perf_counter() - t
        return out

    def _crop_image(self, x: np.ndarray, affine: np.ndarray, f_aff: np.ndarray, f_shape: tuple) -> np.ndarray:
        """The normalised image on a crop grid. Only the crop voxels within the image are resampled; the rest
        is 0, as the resampler gives outside the image (a crop at the edge of the field of view)."""
        lo, hi = sampled_box(x.shape, affine, f_aff, f_shape)
        if np.all(lo == 0) and np.all(hi == np.array(f_shape)):
            return self._resample(x, affine, f_aff, f_shape, order=1)
        out = np.zeros(f_shape, np.float32)
        if np.all(hi > lo):
            out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = self._resample(x, affine, f_aff, f_shape, order=1,
                                                                         box=(lo, hi))
        return out

    def coarse_grid(self, x: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The normalised image on the coarse stage's RAS grid, and that grid's affine."""
        c = self.meta["coarse"]
        g_aff, g_shape = covering_grid(x.shape, affine, c["spacing_mm"], multiple=c["divisor"])
        return self._resample(x, affine, g_aff, g_shape, order=1), g_aff

    def locate_heads(self, x: np.ndarray, affine: np.ndarray) -> list[np.ndarray]:
        """Head centres (RAS mm) from the coarse stage."""
        return self._locate(*self.coarse_grid(x, affine))[0]

    def _locate(self, xc: np.ndarray, g_aff: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        """Head centres (RAS mm) from the coarse network on the coarse grid, and its head-and-lesion
        probability there (for the head search)."""
        c = self.meta["coarse"]
        # no mirroring here: the coarse stage only locates heads
        probs = sliding_window(lambda a: self._run(self.coarse, a), xc, (128, 128, 128), 0.25, c["divisor"])
        lab = class_argmax(probs)
        _, heads = find_heads(lab, g_aff, min_ml=8.0)
        return [h.centre_ras for h in select_heads(heads)], probs[1:4].sum(0)

    def _fine(self, x: np.ndarray, affine: np.ndarray, centre: np.ndarray, mirror: bool | None = None,
              plain: list[np.ndarray] | None = None,
              crop: list[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple]:
        """Cleaned class probabilities of the crop around ``centre``, their argmax, the crop's affine and shape
        (``mirror``: test-time mirroring, default the Segmenter's ``tta``). ``plain``: the unmirrored window
        outputs of this same crop from an earlier call, reused; the list is filled with this call's. ``crop``:
        likewise the crop's normalised image (not resampled again)."""
        f = self.meta["fine"]
        n = int(f["crop_vox"])
        mirror = self.tta if mirror is None else mirror
        f_aff, f_shape = crop_grid(centre, n, f["spacing_mm"])
        xf = crop[0] if crop else self._crop_image(x, affine, f_aff, f_shape)
        if crop is not None:
            crop[:] = [xf]
        earlier = list(plain) if plain else []
        seen: list[np.ndarray] = []

        def run(a: np.ndarray) -> np.ndarray:  # windows come in the same order for the same crop
            p = earlier[len(seen)] if len(seen) < len(earlier) else self._run(self.fine, a)
            seen.append(p)
            return self._run(self.fine, a, True, plain=p) if mirror else p

        probs = sliding_window(run, xf, self.window_vox, self.overlap, f["divisor"])
        if plain is not None:
            plain[:] = seen
        probs, lab = keep_main_components(probs)  # lab is probs' argmax (removed voxels: background)
        return probs, lab, f_aff, f_shape

    def _confirm(self, x: np.ndarray, affine: np.ndarray, centre: np.ndarray, search: bool = False) -> tuple | None:
        """The fine stage as judge: (centre, probs, labels, crop affine, crop shape) when the crop around
        ``centre`` (re-centred once on the fine head; a search's near miss twice) holds ``MIN_HEAD_ML`` of head.

        No pass is mirrored, whatever ``tta``: heads are chosen on plain passes (``segment`` mirrors the measured
        crops of the heads it keeps). For the head search (``search``) only head voxels inside the image's field
        of view count (``_judge`` segments a head it keeps again, mirrored)."""
        plain: list[np.ndarray] = []
        crop: list[np.ndarray] = []
        probs, lab, f_aff, f_shape = self._fine(x, affine, centre, mirror=False, plain=plain, crop=crop)
        c2 = head_centre(np.isin(lab, (1, 2, 3)), f_aff) if not self.fast or search else None
        if c2 is not None and np.linalg.norm(c2 - centre) > RECENTRE_MM:
            centre, plain, crop = c2, [], []  # re-centred once on the fine head (RECENTRE_MM)
            probs, lab, f_aff, f_shape = self._fine(x, affine, centre, mirror=False, plain=plain, crop=crop)
        if self.tta and not search:  # for ``_mirror_measured`` (a search candidate is re-cropped there)
            self._measured[id(probs)] = (centre, plain, crop)
        vox_ml = float(self.meta["fine"]["spacing_mm"]) ** 3 / 1000.0
        head = np.isin(lab, (1, 2, 3)) & (in_field_of_view(f_aff, f_shape, affine, x.shape) if search else True)
        found = head_centre(head, f_aff)  # a search's near miss is cut again around its head in view, once (NEAR_MISS)
        if search and found is not None and NEAR_MISS * SEARCH_MIN_HEAD_ML <= head.sum() * vox_ml < SEARCH_MIN_HEAD_ML \
                and np.linalg.norm(found - centre) > RECENTRE_MM:
            probs, lab, f_aff, f_shape = self._fine(x, affine, found, mirror=False)
            head = np.isin(lab, (1, 2, 3)) & in_field_of_view(f_aff, f_shape, affine, x.shape)
            found = head_centre(head, f_aff)
        if head.sum() * vox_ml < (SEARCH_MIN_HEAD_ML if search else MIN_HEAD_ML):  # the fine stage confirms no head
            return None
        return found, probs, lab, f_aff, f_shape

    def _to_input_grid(self, probs: np.ndarray, f_aff: np.ndarray, f_shape: tuple, affine: np.ndarray,
                       shape: tuple[int, ...]) -> tuple[tuple[slice, ...], np.ndarray]:
        """The crop's class probabilities on the input voxels it covers: (their slices, probabilities)."""
        lo, hi = covered_box(f_shape, f_aff, affine, shape)
        sub_aff = affine.copy()
        sub_aff[:3, 3] = affine[:3, :3] @ lo + affine[:3, 3]
        t_res = time.perf_counter()
        p_in = probs_on_grid(probs, f_aff, sub_aff, tuple(int(v) for v in hi - lo), self.resample_threads)
        self._clock["resample_s"] += time.perf_counter() - t_res
        return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi)), p_in

    def _head_shaped(self, found: tuple, affine: np.ndarray, shape: tuple[int, ...]) -> str:
        """Whether a head found by the search passes the anatomy gate's own head checks on the input grid
        (sphere fit, axis ratio, socket; a head cut by the field of view is judged as the gate judges it): "yes",
        "cut cap" (passes only by the gate's lower radius limit for cut heads: a last resort, ``_search``), "no"."""
        _, probs, _, f_aff, f_shape = found
        sl, p_in = self._to_input_grid(probs, f_aff, f_shape, affine, shape)
        labels = np.zeros(shape, np.uint8)
        labels[sl] = lesion_decision(p_in, self.lesion_threshold)
        heads = check_anatomy(clean_labels(labels, affine), affine).heads
        if not heads or not all(h.plausible for h in heads):
            return "no"
        return "cut cap" if any(cut_cap_only(h) for h in heads) else "yes"

    def _search(self, x: np.ndarray, affine: np.ndarray, xc: np.ndarray, g_aff: np.ndarray, fg_prob: np.ndarray,
                confirmed: list[tuple], avoid: Sequence[np.ndarray] = ()) -> int:
        """Look for the heads the coarse stage missed (``infer.search``), the fine stage judging each candidate,
        until two heads are confirmed or ``MAX_SEARCH`` judgements are spent; with none, over a lattice of the body
        (``MAX_SCAN`` more); then cut caps set aside (``_judge``) as a last resort. Appends to ``confirmed``, returns
        the number judged. No second head where it cannot be in view (``partner_out_of_view``), none near ``avoid``."""
        known = [r[0] for r in confirmed]
        if len(known) == 1 and partner_out_of_view(known[0], x.shape, affine):
            return 0  # a one-hip field of view: the other head cannot be in view, no second head is searched for
        fov = in_field_of_view(g_aff, xc.shape, affine, x.shape)
        mid = body_midline_x(xc, g_aff, fov, lateral=lateral_faces(g_aff, xc.shape, affine, x.shape))
        # where the partner of a head already found can be, then the coarse network's weak heads, then the strongest
        # head-sized spheres (the first head may itself be a false one: the others are tried without its partner)
        queue = (partner_candidates(known[0], x.shape, affine, mid, max_n=8) if len(known) == 1 else []) + \
            coarse_peaks(fg_prob, g_aff, known, mid) + sphere_candidates(xc, g_aff, known, mid)
        reserve: list[tuple] = []
        judged = self._judge(x, affine, queue, confirmed, mid, MAX_SEARCH, reserve, avoid)
        if not confirmed:  # nothing head-like where the coarse network or the spheres pointed: scan the body
            judged += self._judge(x, affine, lattice_candidates(xc, g_aff, fov, [], mid, MAX_SCAN), confirmed, mid,
                                  MAX_SCAN, reserve, avoid)
        confirmed += [reserve[i] for i in last_resort([r[0] for r in confirmed], [r[0] for r in reserve], mid)]
        return judged

    def _judge(self, x: np.ndarray, affine: np.ndarray, queue: list[np.ndarray], confirmed: list[tuple],
               mid: float | None, budget: int, reserve: list[tuple], avoid: Sequence[np.ndarray] = ()) -> int:
        """The fine stage judges the candidates of ``queue`` in turn (at most ``budget``) until two heads are
        confirmed; a head it keeps is appended to ``confirmed``. Returns the number judged. A head that cannot be
        the first's partner (``pair_plausible``, across the midline) is set aside and its partner looked for next
        (the first may be false); in the end two set aside that can be a pair replace the first, else the first
        set aside that is on the other side of the midline is its partner, as before. A head that passes the gate's
        head checks only as a cut cap is appended to ``reserve`` and the search goes on."""
        judged, spares, fallback = 0, [], []
        known = [r[0] for r in confirmed]
        while queue and len(confirmed) < 2 and judged < budget:
            centre = queue.pop(0)
            if not far_from(centre, known) or not far_from(centre, avoid):
                continue
            judged += 1
            r = self._confirm(x, affine, centre, search=True)
            if (r is None or not far_from(r[0], known, 2 * SEPARATION_MM) or not far_from(r[0], avoid)
                    or not plausible_head(r[0], mid)):
                continue
            # the head's shape is judged on a mirrored crop around it, whatever ``tta``: without mirroring a
            # real neck scan's false head passed (tests/test_real_cases.py); with ``tta`` that crop is kept
            mirrored = (r[0], *self._fine(x, affine, r[0], mirror=True))
            shaped = self._head_shaped(mirrored, affine, x.shape)
            r = mirrored if self.tta else r
            if shaped != "yes":
                reserve += [r] if shaped == "cut cap" else []
                continue
            known.append(r[0])
            across = not confirmed or plausible_head(r[0], mid, confirmed[0][0])
            if confirmed and not (across and pair_plausible(confirmed[0][0], r[0])):
                spares.append(r)
                fallback += [r] if across else []
                if first_plausible_pair([h[0] for h in spares]):
                    break
                queue = partner_candidates(r[0], x.shape, affine, mid, max_n=8) + queue
                continue
            confirmed.append(r)
            if len(confirmed) == 1:  # one head found: now look where its partner can be, if it can be in view
                if partner_out_of_view(r[0], x.shape, affine):
                    break
                queue = partner_candidates(r[0], x.shape, affine, mid, max_n=8) + queue
        if len(confirmed) == 1 and spares:
            pair = first_plausible_pair([h[0] for h in spares])
            confirmed[:] = [spares[i] for i in pair] if pair else confirmed + fallback[:1]
        return judged

    def _mirror_measured(self, x: np.ndarray, affine: np.ndarray, found: tuple) -> tuple:
        """A head's measured crop (``_confirm``) with test-time mirroring: its image and plain pass reused, the
        mirrored pass added; the head centre is kept."""
        centre, plain, crop = self._measured[id(found[1])]
        return (found[0], *self._fine(x, affine, centre, mirror=True, plain=plain, crop=crop))

    def _keep_head_shaped(self, confirmed: list[tuple], affine: np.ndarray, shape: tuple[int, ...]) -> list[tuple]:
        """The coarse stage's confirmed heads, less those that fail the gate's head checks (``_head_shaped``: a
        bladder, an iliac wing...), so the search looks for the real ones. A plausible pair and a lone head whose
        partner cannot be in view are kept unchecked (the gate judges them; checking made ``segment`` 1.65x dearer)."""
        if len(confirmed) == 2 and pair_plausible(confirmed[0][0], confirmed[1][0]):
            return confirmed
        if len(confirmed) == 1 and partner_out_of_view(confirmed[0][0], shape, affine):
            return confirmed
        return [r for r in confirmed if self._head_shaped(r, affine, shape) == "yes"]

    def segment(self, image: np.ndarray, affine: np.ndarray, exclude: Sequence[np.ndarray] = ()) -> SegResult:
        """Segment one scan (any orientation); labels come back on the input grid. No head is confirmed within
        ``SEPARATION_MM`` of a centre in ``exclude`` (RAS mm; ``infer.scan_steps.second_look``)."""
        avoid = [np.asarray(c, float) for c in exclude]
        t = {"start": time.perf_counter()}
        self._clock = {"normalise_s": 0.0, "resample_s": 0.0, "networks_s": 0.0}
        self._measured = {}
        x = normalise(image)
        self._clock["normalise_s"] = time.perf_counter() - t["start"]
        xc, g_aff = self.coarse_grid(x, affine)
        centres, fg_prob = self._locate(xc, g_aff)
        centres = [c for c in centres if far_from(c, avoid)]
        if len(centres) == 1 and not self.fast:
            centres += mirror_candidate(image, affine, centres[0])
        t["coarse"] = time.perf_counter()
        confirmed: list[tuple] = []
        for centre in centres:
            r = self._confirm(x, affine, centre)
            if r is not None and far_from(r[0], [c[0] for c in confirmed], 2 * SEPARATION_MM) and far_from(r[0], avoid):
                confirmed.append(r)
        confirmed = self._keep_head_shaped(confirmed, affine, image.shape)
        coarse = {id(r[1]) for r in confirmed}
        t["confirm"] = time.perf_counter()
        judged = self._search(x, affine, xc, g_aff, fg_prob, confirmed, avoid) if len(confirmed) < 2 else 0
        t["search"] = time.perf_counter()
        added = sum(id(r[1]) not in coarse for r in confirmed)
        if self.tta:  # the heads were chosen on plain passes; the search's crops are mirrored already
            confirmed = [self._mirror_measured(x, affine, r) if id(r[1]) in coarse else r for r in confirmed]
        self._measured.clear()  # the plain passes kept for it
        labels = np.zeros(image.shape, np.uint8)
        best = np.zeros(image.shape, np.float32)
        conf_sum, conf_n = 0.0, 0
        found: list[np.ndarray] = []
        for centre, probs, lab, f_aff, f_shape in confirmed:
            found.append(centre)
            fg = lab > 0
            if fg.any():
                conf_sum += float(probs.max(0)[fg].sum())
                conf_n += int(fg.sum())
            sl, p_in = self._to_input_grid(probs, f_aff, f_shape, affine, image.shape)
            fgp = 1.0 - p_in[0]
            take = fgp > best[sl]
            labels[sl][take] = lesion_decision(p_in, self.lesion_threshold)[take]
            best[sl][take] = fgp[take]
        t["fine"] = time.perf_counter()
        labels = clean_labels(labels, affine)
        t["post"] = time.perf_counter()
        # coarse_s + search_s + fine_s + post_s = the whole call; normalise_s, resample_s and networks_s
        # (ONNX Runtime) are parts of it
        timings = {"coarse_s": t["coarse"] - t["start"], "search_s": t["search"] - t["confirm"],
                   "fine_s": (t["confirm"] - t["coarse"]) + (t["fine"] - t["search"]), "post_s": t["post"] - t["fine"],
                   **self._clock}
        search = {"candidates_judged": judged, "heads_added": added}
        return SegResult(labels, conf_sum / conf_n if conf_n else 1.0, found, {k: round(v, 3) for k, v in timings.items()},
                         search)
