"""Training data: cached model-space volumes/crops, foreground-oversampled patches, augmentation.

Caching uses the same ``onfh_seg.preprocess`` functions as inference:
* stage ``coarse``: the whole scan on an RAS grid at the coarse spacing;
* stage ``fine``: a cube around each femoral head (found from the label map) at the fine spacing.
Any manifest of image/label NIfTI pairs works (synthetic or a site's own data).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from onfh_seg.geometry import covering_grid, crop_grid, resample, resample_labels
from onfh_seg.hips import find_heads, select_heads
from onfh_seg.io.manifest import read_manifest, resolve
from onfh_seg.io.nifti import atomic_write_bytes
from onfh_seg.labels import LESION_LABELS, NUM_CLASSES
from onfh_seg.model.augment import build_augment, build_dr_augment
from onfh_seg.preprocess import NORM_CLIP, normalise
from onfh_seg.run.pool import Executor, map_jobs
from onfh_seg.synth.contrast import marrow_mottle, physeal_scar, rician, slab_edge, thick_slices
from onfh_seg.synth.fat_sat import fat_sat_contrast
from onfh_seg.synth.patient import TISSUES
from onfh_seg.synth.randomise import chemical_shift, random_contrast, realistic_contrast, render_random, slab_mask


def _key(image: Path, stage: str, spacing: float, crop_vox: int) -> str:
    st = image.stat()
    raw = f"{image.resolve()}|{st.st_size}|{st.st_mtime_ns}|{stage}|{spacing}|{crop_vox}|v1"
    return hashlib.sha1(raw.encode()).hexdigest()[:16]


def _save_npz(path: Path, **arrays) -> None:
    # function-level import: only for the in-memory archive
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def cache_scan(image_path: Path, label_path: Path, cache_dir: Path, stage: str, spacing: float, crop_vox: int,
               coarse_multiple: int = 8) -> list[Path]:
    """Preprocess one labelled scan into cached model-space arrays; returns the cache files."""
    key = _key(image_path, stage, spacing, crop_vox)
    done = sorted(cache_dir.glob(f"{key}_*.npz"))
    if done:
        return done
    img_nii, lab_nii = nib.load(str(image_path)), nib.load(str(label_path))
    img = normalise(np.asanyarray(img_nii.dataobj))
    lab = np.asanyarray(lab_nii.dataobj).astype(np.uint8)
    aff = img_nii.affine
    out = []
    if stage == "coarse":
        grids = [covering_grid(img.shape, aff, spacing, multiple=coarse_multiple)]
    else:
        _, heads = find_heads(lab, aff, min_ml=5.0)
        grids = [crop_grid(h.centre_ras, crop_vox, spacing) for h in select_heads(heads)]
    for i, (g_aff, g_shape) in enumerate(grids):
        x = resample(img, aff, g_aff, g_shape, order=1)
        y = resample_labels(lab, aff, g_aff, g_shape, NUM_CLASSES)
        p = cache_dir / f"{key}_{i}.npz"
        _save_npz(p, image=x.astype(np.float16), labels=y, affine=g_aff)
        out.append(p)
    if not out:  # no head in this scan: remember that, so it is not retried
        p = cache_dir / f"{key}_none.npz"
        _save_npz(p, image=np.zeros((0,), np.float16), labels=np.zeros((0,), np.uint8), affine=np.eye(4))
        out.append(p)
    return out


def _cache_job(args) -> list[Path]:
    return cache_scan(*args)


def build_cache(manifests: list[str], cache_dir: str | Path, stage: str, spacing: float, crop_vox: int,
                progress: bool = True, workers: int = 2) -> list[Path]:
    """Cache every labelled scan of the manifests (``workers`` processes); returns the non-empty cache files."""
    cache_dir = Path(cache_dir) / f"{stage}_{spacing:g}mm_{crop_vox}"
    cache_dir.mkdir(parents=True, exist_ok=True)
    pairs = []
    for m in manifests:
        for r in read_manifest(m):
            if r.get("image") and r.get("labels"):
                pairs.append((resolve(m, r["image"]), resolve(m, r["labels"])))
    jobs = [(img, lab, cache_dir, stage, spacing, crop_vox) for img, lab in pairs]
    files: list[Path] = []
    done = dict(tqdm(map_jobs(_cache_job, jobs, Executor("local", workers)), total=len(jobs), desc=f"cache {stage}",
                     disable=not progress))
    for i in range(len(jobs)):
        files.extend(p for p in done[i] if not p.name.endswith("_none.npz"))
    return files


def load_items(files: list[Path]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Load cached (image float32, labels uint8) pairs into memory."""
    items = []
    for f in files:
        with np.load(f) as z:
            items.append((z["image"].astype(np.float32), z["labels"]))
    return items


def extract_patch(img: np.ndarray, lab: np.ndarray, centre: np.ndarray, size: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Patch of ``size`` centred at ``centre`` (voxel), zero-padded outside the volume."""
    out_i, out_l = np.zeros(size, np.float32), np.zeros(size, np.uint8)
    lo = np.asarray(centre, int) - np.asarray(size) // 2
    src_lo, src_hi = np.maximum(lo, 0), np.minimum(lo + np.asarray(size), img.shape)
    if np.any(src_hi <= src_lo):
        return out_i, out_l
    dst_lo = src_lo - lo
    dst_hi = dst_lo + (src_hi - src_lo)
    ss = tuple(slice(a, b) for a, b in zip(src_lo, src_hi))
    ds = tuple(slice(a, b) for a, b in zip(dst_lo, dst_hi))
    out_i[ds] = img[ss]
    out_l[ds] = lab[ss]
    return out_i, out_l


def sample_centre(rng: np.random.Generator, lab: np.ndarray, size: tuple[int, int, int], fg_prob: float) -> np.ndarray:
    """nnU-Net-style: with ``fg_prob`` centre on a voxel of a random present foreground class, else uniform."""
    if rng.uniform() < fg_prob:
        present = [c for c in range(1, NUM_CLASSES) if np.any(lab == c)]
        if present:
            c = present[int(rng.integers(len(present)))]
            idx = np.flatnonzero(lab == c)
            return np.array(np.unravel_index(int(idx[rng.integers(idx.size)]), lab.shape))
    half = np.asarray(size) // 2
    hi = np.maximum(np.asarray(lab.shape) - half, half + 1)
    return np.array([rng.integers(h, max(h + 1, e)) for h, e in zip(half, hi)])


class PatchDataset(Dataset):
    """Random training patches: sample ``i`` of epoch ``e`` (index ``e * length + i``) is a function of (seed, e, i)."""

    def __init__(self, items, patch: tuple[int, int, int], length: int, fg_prob: float, augment: bool, seed: int):
        self.items, self.patch, self.length, self.fg_prob, self.seed = items, tuple(patch), length, fg_prob, seed
        self.augment = build_augment() if augment else None

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        epoch, i = divmod(int(index), self.length)
        rng = np.random.default_rng([self.seed, epoch, i])
        img, lab = self.items[int(rng.integers(len(self.items)))]
        centre = sample_centre(rng, lab, self.patch, self.fg_prob)
        x, y = extract_patch(img, lab, centre, self.patch)
        xt, yt = torch.from_numpy(x)[None], torch.from_numpy(y.astype(np.int64))[None]
        if self.augment is not None:
            # function-level import: TorchIO (training extra) loads only in training data workers
            import torchio as tio

            torch.manual_seed(int(rng.integers(2**31)))
            s = self.augment(tio.Subject(image=tio.ScalarImage(tensor=xt), label=tio.LabelMap(tensor=yt)))
            xt, yt = s["image"].data.float(), s["label"].data.long()
        return xt, yt


def dr_normalise(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The inference normalisation (99th percentile of non-zero voxels) with a random scale: a crop's
    percentile differs from the whole scan's that inference divides by."""
    try:
        x = normalise(img)
    except ValueError:
        return np.zeros_like(img, np.float32)
    return np.clip(x * np.float32(rng.uniform(0.75, 1.3)), *NORM_CLIP).astype(np.float32)


class RandomisedPatchDataset(Dataset):
    """Domain-randomised patches (SynthSeg-style): a new contrast, resolution, bias, noise and orientation for
    every sample; sample ``i`` of epoch ``e`` (index ``e * length + i``) is a function of (seed, e, i)."""

    def __init__(self, items, patch: tuple[int, int, int], length: int, fg_prob: float, seed: int, pool: int = 1,
                 spacing_mm: float = 1.0, acquisitions: dict | None = None, teacher_weight: bool = False,
                 teacher_off_cysts: bool = False, teacher_on_edges: bool = False):
        self.items, self.patch, self.length, self.fg_prob, self.seed, self.pool = items, tuple(patch), length, fg_prob, seed, pool
        self.spacing_mm = float(spacing_mm)
        # shares of samples drawn as: spin-echo T1 (``realistic``), gradient echo (``gre``), post-contrast
        # (``post_contrast``), a thin oblique slab (``slab``, on fat-suppressed draws ``fat_sat_slab`` when set;
        # ``slab_edge``: a face through the head with a real edge; ``slab_edge_out_mm``: how far beyond that face the
        # sampled centre may lie, default 15; ``slab_edge_loss_lo``: its last partitions' least loss, default 0.2),
        # heterogeneous healthy marrow (``mottle``, at most ``mottle_max_loss`` of its signal, default 0.5),
        # thick slices with a slice profile (``slice_profile``), lesions always visible (``visible``), a physeal scar
        # across the head's base (``scar``; ``scar_offset_lo``/``_hi``: where, in head radii from the centre), a
        # fat-saturated post-contrast T1 (``fat_sat``: dark healthy marrow, an enhancing band), a fat-suppressed T1
        # without contrast agent on crops without lesion (``fat_sat_plain``: dark healthy marrow, nothing enhancing;
        # a lesion there is not drawn so, as it can hardly be seen; ``fat_sat_red_lo``/``_hi``, ``fat_sat_left_lo``/
        # ``_hi``: red and fatty marrow's share of signal left, ``fat_sat_bone``: share of those draws with bone as
        # dark as the suppressed marrow, not darker), the same suppression on crops with a lesion, its core set
        # apart from the suppressed marrow (``fat_sat_lesion``); 0: not drawn
        self.acq = {k: float(v) for k, v in (acquisitions or {}).items()}
        # teacher_weight: each sample also returns the weight of its distillation term (SegModule): 0 where it is drawn
        # fat-suppressed (with or without lesion), with a slab face through the head (unless ``teacher_on_edges``: a
        # teacher that learnt them) or, with ``teacher_off_cysts``, on a crop with a subchondral cyst, else 1
        self.teacher_weight, self.teacher_off_cysts, self.teacher_on_edges = map(bool, (teacher_weight,
                                                                                    teacher_off_cysts, teacher_on_edges))
        self.acquisition, self.spatial = build_dr_augment(anisotropy=not self.acq.get("slice_profile", 0.0))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        # function-level import: TorchIO (training extra) loads only in training data workers
        import torchio as tio

        epoch, i = divmod(int(index), self.length)
        rng = np.random.default_rng([self.seed, epoch, i, 7])
        tis, lab = self.items[int(rng.integers(len(self.items)))]
        size = tuple(p * self.pool for p in self.patch)
        centre = sample_centre(rng, lab, size, self.fg_prob)
        t, y = extract_patch(tis, lab, centre, size)
        t = t.astype(np.uint8)
        if self.acq.get("scar", 0.0) > 0 and rng.uniform() < self.acq["scar"]:  # the closed growth plate
            t = physeal_scar(t, y, rng, self.spacing_mm / self.pool,
                             (self.acq.get("scar_offset_lo", 0.05), self.acq.get("scar_offset_hi", 0.45)))
        realistic = self.acq.get("realistic", 0.0) > 0 and rng.uniform() < self.acq["realistic"]
        fat_sat = not realistic and self.acq.get("fat_sat", 0.0) > 0 and rng.uniform() < self.acq["fat_sat"]
        # fat-suppressed without contrast agent, by the crop's kind (looked up only where such draws are configured)
        fs_keys = self.acq.get("fat_sat_plain", 0.0) > 0 or self.acq.get("fat_sat_lesion", 0.0) > 0
        lesion = not realistic and not fat_sat and fs_keys and bool(np.isin(y, LESION_LABELS).any())
        plain = (not realistic and not fat_sat and fs_keys and not lesion and self.acq.get("fat_sat_plain", 0.0) > 0
                 and rng.uniform() < self.acq["fat_sat_plain"])
        fs_lesion = lesion and self.acq.get("fat_sat_lesion", 0.0) > 0 and rng.uniform() < self.acq["fat_sat_lesion"]
        post = self.acq.get("post_contrast", 0.0)
        if realistic:
            x = render_random(t, y, rng, realistic_contrast(rng))
        elif fat_sat or plain or fs_lesion:  # ``fat_sat_red_lo``/``_hi``: red and pelvic marrow's share of signal left
            red = (self.acq.get("fat_sat_red_lo", 0.25), self.acq.get("fat_sat_red_hi", 0.55))
            left = (self.acq.get("fat_sat_left_lo", 0.1), self.acq.get("fat_sat_left_hi", 0.35))
            x = render_random(t, y, rng, fat_sat_contrast(rng, enhance=fat_sat, red_left=red, marrow_left=left,
                                                          bone_like_marrow=self.acq.get("fat_sat_bone", 0.0),
                                                          visible_core=fs_lesion))
        else:
            x = render_random(t, y, rng, random_contrast(rng, post_contrast=post, visible=self.acq.get("visible", 0.0) > 0))
        if self.acq.get("mottle", 0.0) > 0 and rng.uniform() < self.acq["mottle"]:  # healthy marrow heterogeneity
            x = marrow_mottle(x, t, rng, self.acq.get("mottle_max_loss", 0.5))
        if not realistic and self.acq.get("gre", 0.0) > 0 and rng.uniform() < self.acq["gre"]:
            x = chemical_shift(x, t, rng)
        if self.pool > 1:  # render finer than the network grid (partial volume), then average down
            p = self.pool
            x = x.reshape(self.patch[0], p, self.patch[1], p, self.patch[2], p).mean(axis=(1, 3, 5))
            y = y[p // 2::p, p // 2::p, p // 2::p]
        if self.acq.get("slice_profile", 0.0) > 0 and rng.uniform() < self.acq["slice_profile"]:
            x = thick_slices(x, rng, self.spacing_mm)
        torch.manual_seed(int(rng.integers(2**31)))
        s = tio.Subject(image=tio.ScalarImage(tensor=torch.from_numpy(np.ascontiguousarray(x))[None]),
                        label=tio.LabelMap(tensor=torch.from_numpy(np.ascontiguousarray(y).astype(np.int64))[None]))
        s = self.acquisition(s)
        noisy = rician(s["image"].data[0].numpy().astype(np.float32), rng)
        edge = False
        slab = self.acq.get("fat_sat_slab", self.acq.get("slab", 0.0)) if fat_sat or plain or fs_lesion else \
            self.acq.get("slab", 0.0)
        if slab > 0 and rng.uniform() < slab:  # no signal outside the slab
            edge = self.acq.get("slab_edge", 0.0) > 0 and rng.uniform() < self.acq["slab_edge"]
            if edge:
                weight, inside = slab_edge(self.patch, self.spacing_mm, rng,  # a face through the head, real edge
                                           self.acq.get("slab_edge_out_mm", 15.0),
                                           self.acq.get("slab_edge_loss_lo", 0.2))
            else:
                inside = slab_mask(self.patch, self.spacing_mm, rng)
                weight = inside
            noisy = noisy * weight
            s["label"].set_data(s["label"].data * torch.from_numpy(inside)[None])
        s["image"].set_data(torch.from_numpy(noisy)[None])
        s = self.spatial(s)
        xn = dr_normalise(s["image"].data[0].numpy().astype(np.float32), rng)
        if self.teacher_weight:
            cyst = self.teacher_off_cysts and bool((t == TISSUES["cyst"]).any())
            kd = 0.0 if fat_sat or plain or fs_lesion or (edge and not self.teacher_on_edges) or cyst else 1.0
            return torch.from_numpy(xn)[None], s["label"].data.long(), torch.tensor(kd)
        return torch.from_numpy(xn)[None], s["label"].data.long()


class EpochSampler(Sampler[int]):
    """Indices ``epoch * length + i`` (Lightning calls ``set_epoch``): persistent data workers get the epoch."""

    def __init__(self, length: int) -> None:
        self.length, self.epoch = int(length), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        return iter(range(self.epoch * self.length, (self.epoch + 1) * self.length))


def load_dr_items(paths: list[Path]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Load (tissue uint8, labels uint8) training items written by ``synth.randomise``."""
    items = []
    for f in paths:
        with np.load(f) as z:
            items.append((z["tissue"], z["labels"]))
    return items


class VolumeDataset(Dataset):
    """Whole cached volumes (validation), optionally centre-cropped to ``size``."""

    def __init__(self, items, size: tuple[int, int, int] | None):
        self.items, self.size = items, size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        img, lab = self.items[i]
        if self.size is not None:
            img, lab = extract_patch(img, lab, np.asarray(img.shape) // 2, self.size)
        return torch.from_numpy(img)[None], torch.from_numpy(lab.astype(np.int64))[None]


def _one_thread(_: int) -> None:
    """Data-loader workers compute with one thread (torch's one per core in every worker oversubscribes)."""
    torch.set_num_threads(1)


class SegDataModule(pl.LightningDataModule):
    """Caches manifests for one stage and serves patches (train) and volumes (val)."""

    def __init__(self, stage: str, train_manifests: list[str], val_manifests: list[str], cache_dir: str,
                 spacing_mm: float, crop_vox: int, patch_vox: list[int], val_vox: list[int] | None,
                 batch_size: int, samples_per_epoch: int, fg_oversample: float, num_workers: int,
                 augment: bool, seed: int = 0, randomise: dict | None = None, **_: object):
        super().__init__()
        self.randomise = dict(randomise) if randomise else None
        self.cfg = dict(stage=stage, train=list(train_manifests), val=list(val_manifests), cache=cache_dir,
                        spacing=float(spacing_mm), crop=int(crop_vox), patch=tuple(patch_vox),
                        val_vox=tuple(val_vox) if val_vox else None, bs=int(batch_size), n=int(samples_per_epoch),
                        fg=float(fg_oversample), workers=int(num_workers), augment=bool(augment), seed=int(seed))

    def setup(self, stage: str | None = None) -> None:
        c = self.cfg
        if hasattr(self, "train_ds"):
            return
        if self.randomise:
            self._setup_randomised()
            return
        tr = load_items(build_cache(c["train"], c["cache"], c["stage"], c["spacing"], c["crop"]))
        va = load_items(build_cache(c["val"], c["cache"], c["stage"], c["spacing"], c["crop"])) if c["val"] else []
        if not tr:
            raise ValueError("no labelled training scans with a femoral head found in the training manifests")
        self.train_ds = PatchDataset(tr, c["patch"], c["n"], c["fg"], c["augment"], c["seed"])
        self.val_ds = VolumeDataset(va, c["val_vox"])

    def _setup_randomised(self) -> None:
        """Domain-randomised training (tissue maps, random contrast per sample) and a fixed validation
        set rendered the same way from other patients (training styles only: no held-out renderer)."""
        # function-level import: only for domain-randomised training
        from omegaconf import OmegaConf

        from onfh_seg.synth.cohort import synth_config
        from onfh_seg.synth.randomise import build_dr_cohort

        c, r = self.cfg, self.randomise
        r = OmegaConf.to_container(r, resolve=True) if not isinstance(r, dict) else r
        pool = int(r.get("pool", 1))
        grid_mm = c["spacing"] / pool
        size = c["crop"] * pool
        base = Path(r["out_dir"]) / f"{c['stage']}_{grid_mm:g}mm_{size}"
        cohorts = {}
        for split in ("train", "val"):
            gen = dict(r[split])
            cfg = synth_config({k: v for k, v in gen.items() if k in ("seed", "n_patients", "months", "disease", "acquisition")})
            cfg["shapes"] = bool(gen.get("shapes", False))  # lesion shapes, cysts, healthy-hip edema
            cfg["cyst_share"] = float(gen.get("cyst_share", 0.2))  # share of hips with subchondral cysts (shapes)
            healthy = float(cfg["disease"].get("healthy_fraction", 0.0))  # content does not depend on cohort size
            cysts = f"_cysts{cfg['cyst_share']:g}" if cfg["cyst_share"] != 0.2 else ""
            out = base / (f"seed{cfg['seed']}" + ("_shapes" if cfg["shapes"] else "") + (f"_healthy{healthy:g}" if healthy else "")
                          + cysts)
            cohorts[split] = build_dr_cohort(cfg, out, c["stage"], grid_mm, size, workers=int(r.get("workers", 2)))
        tr = load_dr_items(cohorts["train"])
        acq = r.get("acquisitions") or None
        kd = {k: bool(r.get(k, False)) for k in ("teacher_weight", "teacher_off_cysts", "teacher_on_edges")}
        self.train_ds = RandomisedPatchDataset(tr, c["patch"], c["n"], c["fg"], c["seed"], pool=pool,
                                               spacing_mm=c["spacing"], acquisitions=acq, **kd)
        val_ds = RandomisedPatchDataset(load_dr_items(cohorts["val"]), c["val_vox"] or c["patch"],
                                        int(r.get("val_samples", 16)), float(r.get("val_fg", 1.0)), int(r["val"]["seed"]),
                                        pool=pool, spacing_mm=c["spacing"], acquisitions=acq)
        fixed = [val_ds[i] for i in range(len(val_ds))]  # rendered once: the same crops at every validation
        self.val_ds = VolumeDataset([(x[0].numpy(), y[0].numpy().astype(np.uint8)) for x, y in fixed], None)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_ds, batch_size=self.cfg["bs"], sampler=EpochSampler(len(self.train_ds)),
                          num_workers=self.cfg["workers"], persistent_workers=self.cfg["workers"] > 0, drop_last=True,
                          worker_init_fn=_one_thread)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_ds, batch_size=1, shuffle=False, num_workers=0)
