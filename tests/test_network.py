"""Network factory: legacy (MONAI default) and nnU-Net-style up-sampling variants."""

from __future__ import annotations

import pytest
import torch

from onfh_seg.model.network import UNetK2, build_unet


def test_default_is_monai_unet_with_prelu_and_kernel3_up():
    net = build_unet([4, 8, 16], [2, 2])
    assert type(net).__name__ == "UNet" and not isinstance(net, UNetK2)
    ups = [m for m in net.modules() if isinstance(m, torch.nn.ConvTranspose3d)]
    assert ups and all(m.kernel_size == (3, 3, 3) for m in ups)
    assert any(isinstance(m, torch.nn.PReLU) for m in net.modules())


def test_kernel2_upsampling_keeps_shape_and_uses_leaky_relu():
    net = build_unet([4, 8, 16], [2, 2], act="leakyrelu", up_kernel_size=2).eval()
    ups = [m for m in net.modules() if isinstance(m, torch.nn.ConvTranspose3d)]
    assert ups and all(m.kernel_size == (2, 2, 2) and m.stride == (2, 2, 2) for m in ups)
    assert not any(isinstance(m, torch.nn.PReLU) for m in net.modules())
    acts = [m for m in net.modules() if isinstance(m, torch.nn.LeakyReLU)]
    assert acts and all(m.negative_slope == 0.01 for m in acts)
    with torch.no_grad():
        assert net(torch.zeros(1, 1, 16, 24, 8)).shape == (1, 5, 16, 24, 8)


@pytest.mark.parametrize("kw", [{"act": "gelu"}, {"up_kernel_size": 4}, {"up_kernel_size": 2, "strides": [2, 1]}])
def test_bad_network_options_raise(kw):
    args = {"channels": [4, 8, 16], "strides": [2, 2]} | kw
    with pytest.raises(ValueError):
        build_unet(**args)


def test_loss_weights_mix_dice_and_cross_entropy():
    from onfh_seg.model.module import SegModule

    torch.manual_seed(0)
    logits = torch.randn(2, 5, 8, 8, 8)
    y = torch.randint(0, 5, (2, 1, 8, 8, 8))
    net = {"channels": [4, 8], "strides": [2]}
    ce = SegModule(net, dice_weight=0.0, ce_weight=1.0).loss(logits, y)
    assert torch.allclose(ce, torch.nn.functional.cross_entropy(logits, y[:, 0]))
    both = SegModule(net).loss(logits, y)
    dice = SegModule(net, dice_weight=1.0, ce_weight=0.0).loss(logits, y)
    assert torch.allclose(both, dice + ce)
    assert torch.allclose(SegModule(net, dice_weight=0.25, ce_weight=1.0).loss(logits, y), 0.25 * dice + ce)


def test_fine_validation_runs_training_patch_windows_coarse_one_pass():
    """Validation predicts like the engine: fine volumes in patch-size windows, coarse in one pass."""
    from onfh_seg.model.module import SegModule

    net = {"channels": [4, 8], "strides": [2], "num_res_units": 0}
    seen: list[tuple[int, ...]] = []
    for stage, expect in (("fine", {(16, 16, 16)}), ("coarse", {(32, 32, 32)})):
        m = SegModule(net, stage=stage, patch_vox=[16, 16, 16]).eval()
        seen.clear()
        m.net.register_forward_hook(lambda mod, inp, out: seen.append(tuple(inp[0].shape[2:])))
        with torch.no_grad():
            out = m.predict_volume(torch.zeros(1, 1, 32, 32, 32))
        assert out.shape == (1, 5, 32, 32, 32) and set(seen) == expect, (stage, seen)


def _zero_out_filters(net: torch.nn.Module, dead: dict[str, torch.Tensor]) -> None:
    """Zero the output filters ``dead[name]`` (weights and biases) of the named parameters; a transposed conv's
    output filters are along its second axis."""
    params = dict(net.named_parameters())
    with torch.no_grad():
        for name, idx in dead.items():
            params[name].index_fill_(1 if name.endswith(".0.conv.weight") else 0, idx, 0.0)


def test_narrowed_unet_computes_what_the_wide_one_computes_when_the_dropped_channels_are_dead():
    from onfh_seg.model.network import narrow_unet_state
    torch.manual_seed(0)
    wide = build_unet([8, 16, 32], [2, 2], act="leakyrelu", up_kernel_size=2).eval()
    narrow = build_unet([4, 8, 16], [2, 2], act="leakyrelu", up_kernel_size=2).eval()
    # dead channels (zero filters, zero bias) output exactly 0 through instance norm and leaky ReLU, so whatever
    # reads them gets nothing from them: the wide net then computes what its live channels compute
    live_cut = {"model.0": torch.tensor([0, 2, 5, 7]),
                "model.1.submodule.0": torch.tensor([1, 3, 4, 9, 10, 11, 12, 15]),
                "model.1.submodule.1.submodule": torch.arange(16, 32)}
    dead = {f"{block}.{conv}.{p}": idx for block, idx in live_cut.items()
            for conv in ("conv.unit0.conv", "residual") for p in ("weight", "bias")}
    up_dead = torch.tensor([0, 1, 6, 7])  # the decoder level's output (transposed conv, then its residual unit)
    dead |= {f"model.1.submodule.2.{p}": up_dead for p in ("0.conv.weight", "0.conv.bias", "1.conv.unit0.conv.weight",
                                                           "1.conv.unit0.conv.bias")}
    _zero_out_filters(wide, dead)
    narrow.load_state_dict(narrow_unet_state(wide.state_dict(), [4, 8, 16]))
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.allclose(wide(x), narrow(x), atol=1e-5)


def test_distillation_loss_is_zero_for_the_teacher_itself_and_scales_with_temperature_squared():
    from onfh_seg.model.module import distillation_loss
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 4, 4, 4), torch.randn(2, 5, 4, 4, 4)
    assert distillation_loss(t, t).abs() < 1e-6
    p, log_q = torch.softmax(t, 1), torch.log_softmax(s, 1)
    by_hand = (p * (torch.log(p) - log_q)).sum(1).mean()
    assert torch.allclose(distillation_loss(s, t), by_hand, atol=1e-6)
    p2, log_q2 = torch.softmax(t / 2, 1), torch.log_softmax(s / 2, 1)
    assert torch.allclose(distillation_loss(s, t, 2.0), 4 * (p2 * (torch.log(p2) - log_q2)).sum(1).mean(), atol=1e-6)


def test_a_student_learns_from_a_teacher_checkpoint_kept_out_of_its_own_weights(tmp_path):
    import warnings

    from onfh_seg.model.module import SegModule, distillation_loss
    net = {"channels": [4, 8, 16], "strides": [2, 2], "act": "leakyrelu", "up_kernel_size": 2}
    torch.manual_seed(0)
    teacher = SegModule(net={**net, "channels": [8, 16, 32]}, patch_vox=[16, 16, 16])
    torch.save({"state_dict": teacher.state_dict(), "hyper_parameters": dict(teacher.hparams),
                "pytorch-lightning_version": "2.0.0"}, tmp_path / "t.ckpt")
    student = SegModule(net=net, patch_vox=[16, 16, 16], teacher=str(tmp_path / "t.ckpt"), kd_weight=0.5)
    student.on_fit_start()
    assert len(student._teacher) == 1 and not any(k.startswith("_teacher") for k in student.state_dict())
    assert sum(p.numel() for p in student.parameters()) == sum(p.numel() for p in student.net.parameters())
    x, y = torch.randn(2, 1, 16, 16, 16), torch.randint(0, 5, (2, 1, 16, 16, 16))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log outside a Trainer
        loss = student.training_step((x, y), 0)
    with torch.no_grad():
        expected = student.loss(student(x), y) + 0.5 * distillation_loss(student(x), teacher(x))
    assert torch.allclose(loss, expected, atol=1e-5)
    plain = SegModule(net=net, patch_vox=[16, 16, 16])
    plain.on_fit_start()
    assert plain._teacher == []


def test_false_lesion_term_prices_soft_lesion_ml_on_lesion_free_samples_only():
    """false_lesion_ml: the batch mean of softmax(2) + softmax(3) summed over a lesion-free sample's voxels, in mL;
    a sample with a lesion adds 0; fp_weight adds it to the training loss (0, the default, leaves the loss as it was)."""
    import warnings

    from onfh_seg.model.module import SegModule, false_lesion_ml
    logits = torch.full((2, 5, 4, 4, 4), -20.0)
    logits[:, 1] = 20.0  # everything head
    logits[0, 1, 0, 0, :2] = -20.0
    logits[0, 3, 0, 0, :2] = 20.0  # sample 0: two voxels of band, certain
    logits[1, 2, 0, 0, 0] = 20.0
    logits[1, 1, 0, 0, 0] = -20.0  # sample 1: one voxel of core
    healthy = torch.ones(2, 1, 4, 4, 4, dtype=torch.long)
    assert torch.allclose(false_lesion_ml(logits, healthy, 0.5), torch.tensor((2 * 0.5 + 1 * 0.5) / 2), atol=1e-6)
    diseased = healthy.clone()
    diseased[1, 0, 3, 3, 3] = 2  # sample 1 holds a lesion: only sample 0's false band counts
    assert torch.allclose(false_lesion_ml(logits, diseased, 0.5), torch.tensor(2 * 0.5 / 2), atol=1e-6)
    diseased[0, 0, 3, 3, 3] = 3
    assert float(false_lesion_ml(logits, diseased, 0.5)) == 0.0
    net = {"channels": [4, 8, 16], "strides": [2, 2], "act": "leakyrelu", "up_kernel_size": 2}
    torch.manual_seed(0)
    m = SegModule(net=net, patch_vox=[16, 16, 16], spacing_mm=1.1, fp_weight=0.2)
    x, y = torch.randn(2, 1, 16, 16, 16), torch.ones(2, 1, 16, 16, 16, dtype=torch.long)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log outside a Trainer
        loss = m.training_step((x, y), 0)
        m.hparams.fp_weight = 0.0
        plain = m.training_step((x, y), 0)
    with torch.no_grad():
        fp = false_lesion_ml(m(x), y, 1.1**3 / 1000)
    assert float(fp) > 0 and torch.allclose(plain, m.loss(m(x), y).detach(), atol=1e-5)
    assert torch.allclose(loss, plain + 0.2 * fp, atol=1e-5)


def test_lesion_volume_term_pulls_the_soft_volume_to_the_true_one_both_ways():
    """lesion_volume_error_ml: batch mean of |soft - true lesion mL|; on a lesion-free sample it equals
    false_lesion_ml's; an under-call costs like an over-call; volume_weight adds it to the training loss."""
    import warnings

    from onfh_seg.model.module import SegModule, false_lesion_ml, lesion_volume_error_ml
    logits = torch.full((2, 5, 4, 4, 4), -20.0)
    logits[:, 1] = 20.0
    logits[:, 1, 0, 0, :3] = -20.0
    logits[:, 2, 0, 0, :3] = 20.0  # both samples: three voxels of core, certain
    healthy = torch.ones(2, 1, 4, 4, 4, dtype=torch.long)
    assert torch.allclose(lesion_volume_error_ml(logits, healthy, 0.5), false_lesion_ml(logits, healthy, 0.5))
    exact = healthy.clone()
    exact[:, 0, 0, 0, :3] = 2
    assert float(lesion_volume_error_ml(logits, exact, 0.5)) < 1e-6
    under = healthy.clone()
    under[:, 0, 0, :2, :] = 3  # eight true voxels, three called: 5 voxels short in each sample
    over = healthy.clone()
    over[:, 0, 3, 3, 3] = 2  # one true voxel, three called: 2 too many
    assert torch.allclose(lesion_volume_error_ml(logits, under, 0.5), torch.tensor(2.5), atol=1e-5)
    assert torch.allclose(lesion_volume_error_ml(logits, over, 0.5), torch.tensor(1.0), atol=1e-5)
    net = {"channels": [4, 8, 16], "strides": [2, 2], "act": "leakyrelu", "up_kernel_size": 2}
    torch.manual_seed(0)
    m = SegModule(net=net, patch_vox=[16, 16, 16], spacing_mm=1.1, volume_weight=0.3)
    x, y = torch.randn(2, 1, 16, 16, 16), torch.ones(2, 1, 16, 16, 16, dtype=torch.long)
    y[0, 0, 4:8, 4:8, 4:8] = 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log outside a Trainer
        loss = m.training_step((x, y), 0)
    with torch.no_grad():
        plain = m.loss(m(x), y)
        ve = lesion_volume_error_ml(m(x), y, 1.1**3 / 1000)
    assert float(ve) > 0 and torch.allclose(loss, plain + 0.3 * ve, atol=1e-5)


def test_retest_view_turns_and_shifts_a_crop_but_keeps_its_volume():
    """retest_view: no turn, shift or noise gives the crop back; a turn of up to 3 degrees and a shift of up to 2
    voxels moves a ball (its voxels change) but keeps its volume within 3%; the noise has the asked SD."""
    from onfh_seg.model.module import retest_view
    z, y, x = torch.meshgrid(*(torch.arange(32.0),) * 3, indexing="ij")
    ball = (((z - 15.5) ** 2 + (y - 14.0) ** 2 + (x - 17.0) ** 2) < 64).float()[None, None].repeat(2, 1, 1, 1, 1)
    assert torch.allclose(retest_view(ball, 0.0, 0.0, 0.0), ball, atol=1e-5)
    torch.manual_seed(3)
    moved = retest_view(ball, 3.0, 2.0, 0.0)
    assert float((moved - ball).abs().sum()) > 50  # it moved
    assert torch.allclose(moved.sum((1, 2, 3, 4)), ball.sum((1, 2, 3, 4)), rtol=0.03)
    noisy = retest_view(torch.zeros(2, 1, 32, 32, 32), 0.0, 0.0, 0.05)
    assert abs(float(noisy.std()) - 0.05) < 0.002


def test_lesion_consistency_term_prices_a_volume_change_on_the_repeat_view():
    """lesion_consistency_ml: 0 for the same call twice, the mL difference otherwise; consistency_weight adds it
    to the training loss, from a second pass on the crop's retest_view."""
    import warnings

    from onfh_seg.model.module import SegModule, lesion_consistency_ml, retest_view
    logits = torch.full((2, 5, 4, 4, 4), -20.0)
    logits[:, 1] = 20.0
    other = logits.clone()
    other[:, 1, 0, 0, :3] = -20.0
    other[:, 3, 0, 0, :3] = 20.0  # three voxels of band more
    assert float(lesion_consistency_ml(logits, logits, 0.5)) < 1e-6
    assert torch.allclose(lesion_consistency_ml(logits, other, 0.5), torch.tensor(1.5), atol=1e-5)
    net = {"channels": [4, 8, 16], "strides": [2, 2], "act": "leakyrelu", "up_kernel_size": 2}
    torch.manual_seed(0)
    m = SegModule(net=net, patch_vox=[16, 16, 16], spacing_mm=1.1, consistency_weight=0.5)
    x, y = torch.randn(2, 1, 16, 16, 16), torch.ones(2, 1, 16, 16, 16, dtype=torch.long)
    torch.manual_seed(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log outside a Trainer
        loss = m.training_step((x, y), 0)
    torch.manual_seed(1)
    with torch.no_grad():
        logits = m(x)
        repeat = m(retest_view(x, 3.0, 2.0, 0.05))  # the same draw as inside training_step
        plain = m.loss(logits, y)
        cons = lesion_consistency_ml(logits, repeat, 1.1**3 / 1000)
    assert float(cons) > 0 and torch.allclose(loss, plain + 0.5 * cons, atol=1e-5)


@pytest.mark.parametrize("cfg", [{"init_from": "no/such.ckpt", "model": {}},
                                 {"init_from": None, "model": {"teacher": "no/such.ckpt", "kd_weight": 1.0}}])
def test_training_refuses_a_missing_start_or_teacher_checkpoint_before_any_work(cfg):
    from onfh_seg.train import train
    with pytest.raises(FileNotFoundError, match="no checkpoint at no/such.ckpt"):
        train(cfg)


def test_distillation_weight_leaves_out_the_samples_of_weight_zero():
    """Per-sample distillation weights (experiment fine_fskd): a sample of weight 0 adds nothing, the rest are
    averaged as without weights; all weights 0 give 0."""
    from onfh_seg.model.module import distillation_loss
    torch.manual_seed(1)
    s, t = torch.randn(2, 5, 4, 4, 4), torch.randn(2, 5, 4, 4, 4)
    only_first = distillation_loss(s, t, weight=torch.tensor([1.0, 0.0]))
    assert torch.allclose(only_first, distillation_loss(s[:1], t[:1]), atol=1e-6)
    assert torch.allclose(distillation_loss(s, t, weight=torch.ones(2)), distillation_loss(s, t), atol=1e-6)
    assert distillation_loss(s, t, weight=torch.zeros(2)) == 0
    assert not torch.allclose(only_first, distillation_loss(s, t), atol=1e-3)
