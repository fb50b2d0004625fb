"""Training options on a tiny network: weight averaging, ensemble members, checkpoints, determinism."""

import dataclasses
import warnings
from pathlib import Path

import pytest
import torch

from echoef.model import augment, network, resume, runtime, training

from conftest import train_config

CONFIG = {"seed": 3,
          "network": {"architecture": "Unet", "encoder": "resnet18", "encoder_weights": None, "encoder_depth": 3, "decoder_channels": [32, 16, 8],
                      "input_size": 32, "phases_per_input": 1, "members": 1},
          "optimisation": {"epochs": 1, "batch_size": 4, "lr": 0.01, "weight_decay": 0.0, "dice_weight": 1.0, "ce_weight": 1.0,
                           "ema_decay": 0.0, "ef_weight": 0.0, "es_weight": 0.0},
          "augment": {"rotation_deg": 5, "scale": 0.05, "gamma": 0.1, "blur_sigma_px": 1.0, "noise_std": 0.02},
          "runtime": {"device": "cpu", "threads": 1, "processes": 1, "parallel_members": 1, "precision": "fp32"}}


def config(**groups):
    return train_config(CONFIG, **groups)


def data(n=8, size=32):
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(n, 1, size, size, generator=generator)
    labels = torch.zeros(n, size, size, dtype=torch.long)
    labels[:, 8:24, 10:22] = 1
    labels[:, 4:8, 10:22] = 3
    return images, labels


def trained(train, phases=1):
    runtime.seed_everything(train.seed)
    net = network.build_network(train.network, phases)
    state, best_epoch, history = training.Trainer(net, data(), data(4), train, "cpu").run()
    return net, state, best_epoch, history


def test_ema_weights_are_the_ones_validated_and_kept():
    # One epoch of two steps: the kept weights are the single checkpoint. Without averaging they are
    # the trained weights; with it, the average (decay 0.5 of the first step's weights and the second's).
    net, state, best_epoch, _ = trained(config())
    assert best_epoch == 0 and all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    net_ema, state_ema, _, _ = trained(config(optimisation={"ema_decay": 0.5}))
    key = "network.encoder.conv1.weight"
    assert torch.equal(net_ema.state_dict()[key], net.state_dict()[key])  # same seed, same training
    assert not torch.allclose(state_ema[key], net_ema.state_dict()[key])


def test_cpu_training_repeats_bit_for_bit():
    _, first, _, history = trained(config(optimisation={"ema_decay": 0.9}))
    _, second, _, again = trained(config(optimisation={"ema_decay": 0.9}))
    assert history == again and all(torch.equal(first[k], second[k]) for k in first)


def test_bf16_training_on_cpu_repeats_bit_for_bit_and_is_not_float32():
    _, first, _, history = trained(config(runtime={"precision": "bf16"}))
    _, second, _, again = trained(config(runtime={"precision": "bf16"}))
    assert history == again and all(torch.equal(first[k], second[k]) for k in first)
    _, full, _, _ = trained(config())
    key = "network.encoder.conv1.weight"
    assert not torch.equal(first[key], full[key])
    assert torch.allclose(first[key], full[key], atol=0.05)  # AdamW moves a weight about lr (0.01) per step; two steps


def test_auto_precision_is_bf16_only_on_hardware_with_native_bf16(monkeypatch):
    for native in (True, False):
        monkeypatch.setattr(runtime, "has_native_bf16", lambda device, native=native: native)
        expected = torch.bfloat16 if native else None
        assert runtime.autocast_dtype("auto", "cpu") is expected and runtime.autocast_dtype("auto", "cuda") is expected
        assert runtime.autocast_dtype("fp32", "cpu") is None and runtime.autocast_dtype("fp32", "cuda") is None
        assert runtime.precision_name("auto", "cpu") == ("bf16" if native else "float32") and runtime.precision_name("fp32", "cuda") == "float32"
    # Asked for explicitly, bf16 is honoured; where it would be emulated, with a warning naming the keys.
    with pytest.warns(UserWarning, match="emulated.*train.runtime.precision / infer.precision"):
        assert runtime.autocast_dtype("bf16", "cpu") is torch.bfloat16
    monkeypatch.setattr(runtime, "has_native_bf16", lambda device: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert runtime.autocast_dtype("bf16", "cpu") is torch.bfloat16


def test_cpu_bf16_is_native_with_avx512_bf16_or_amx_and_not_when_torch_cannot_tell(monkeypatch):
    for avx512_bf16, amx, native in ((False, False, False), (True, False, True), (False, True, True)):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v, raising=False)
        assert runtime.has_native_bf16("cpu") is native
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    assert runtime.has_native_bf16("cpu") is False


def test_bf16_scores_are_float32_and_close_to_float32_ones():
    runtime.seed_everything(0)
    net = network.build_network(config().network, 1).eval()
    images = data(3)[0]
    full, mixed = network.predict_scores(net, images, 2, precision="fp32"), network.predict_scores(net, images, 2, precision="bf16")
    assert full.dtype == mixed.dtype == torch.float32
    assert not torch.equal(full, mixed) and torch.allclose(full, mixed, atol=0.05)


def test_members_have_consecutive_seeds_and_load_as_an_ensemble(tmp_path):
    two = config(network={"members": 2})
    members = training.train_members(data(), data(4), two, "cpu")
    assert [m["seed"] for m in members] == [3, 4]
    key = "network.encoder.conv1.weight"
    assert not torch.equal(members[0]["state_dict"][key], members[1]["state_dict"][key])
    network.save_checkpoint(tmp_path / "m.pt", [m["state_dict"] for m in members], two.network, {})
    models, state = network.load_checkpoint(tmp_path / "m.pt")
    assert len(models) == 2 and state["model_config"]["input_size"] == 32
    assert torch.equal(models[1].state_dict()[key], members[1]["state_dict"][key])


@pytest.mark.slow  # starts worker processes, each importing torch
def test_members_trained_in_parallel_processes_are_the_ones_trained_in_turn(tmp_path):
    # Each member is seeded alone, so two worker processes give the networks of one process, bit
    # for bit on CPU (one thread each way); the log receives every member's rows after training.
    # Each worker keeps its own member's saved state, and a second run resumes all three.
    three = config(network={"members": 3, "phases_per_input": [1, 2, 1]}, optimisation={"epochs": 2})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        in_turn = training.train_members(data(), data(4), three, "cpu")
    finally:
        torch.set_num_threads(threads)
    rows = []
    parallel = training.train_members(data(), data(4), dataclasses.replace(three, runtime=dataclasses.replace(three.runtime, parallel_members=2)),
                               "cpu", lambda member, epoch, row: rows.append((member, epoch, row["train_loss"])), tmp_path)
    assert [(m["seed"], m["phases_per_input"]) for m in parallel] == [(3, 1), (4, 2), (5, 1)]
    for a, b in zip(in_turn, parallel, strict=True):
        assert a["history"] == b["history"] and a["best_epoch"] == b["best_epoch"]
        assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert [(m, e) for m, e, _ in rows] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    assert rows[3][2] == in_turn[1]["history"][1]["train_loss"]
    assert len(list(tmp_path.glob("*.resume.pt"))) == 3
    resumed = training.train_members(data(), data(4), dataclasses.replace(three, runtime=dataclasses.replace(three.runtime, parallel_members=2)),
                                     "cpu", resume_folder=tmp_path)
    assert [m["resumed_after_epoch"] for m in resumed] == [2, 2, 2]
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for a, b in zip(in_turn, resumed) for k in a["state_dict"])


def test_tta_is_the_mean_over_three_gammas():
    runtime.seed_everything(0)
    net = network.build_network(config().network, 1).eval()
    images = data(3)[0]
    with torch.no_grad():
        expected = sum(net(network.apply_gamma(images, g)).softmax(1) for g in network.TTA_GAMMAS) / 3
    assert torch.allclose(network.predict_scores(net, images, 2, tta=True, precision="fp32"), expected, atol=1e-6)
    assert not torch.allclose(network.predict_scores(net, images, 2, precision="fp32"), expected, atol=1e-4)


def _blobs(size=64):
    """Two smooth Gaussian blobs (1, 1, size, size): bilinear resampling moves them without loss."""
    y, x = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij")
    blob = lambda cy, cx, sd: torch.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * sd**2))  # noqa: E731
    return (blob(30, 38, 4) + 0.5 * blob(45, 20, 5))[None, None]


@pytest.mark.parametrize("scale", [0.8, 0.9, 0.95])
def test_shrinking_about_the_apex_moves_each_point_toward_the_probe(scale):
    """A blob's centroid c moves to p + scale * (c - p), p the probe at the grid's top centre
    (pixel-centre coordinates ((S - 1) / 2, -0.5): affine_grid's (0, -1) without aligned corners)."""
    size = 64
    images = _blobs(size)
    shrunk = network.about_apex(images, 1 / scale)
    probe = torch.tensor([-0.5, (size - 1) / 2])

    def centroid(image):
        y, x = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64), indexing="ij")
        weights = image[0, 0].double()
        return torch.stack([(weights * y).sum(), (weights * x).sum()]) / weights.sum()

    expected = probe + scale * (centroid(images) - probe)
    assert torch.allclose(centroid(shrunk), expected.double(), atol=0.05), (centroid(shrunk), expected)
    assert shrunk.sum() == pytest.approx(scale**2 * images.sum().item(), rel=0.01)  # area shrinks by scale squared
    assert torch.allclose(network.about_apex(images, 1.0), images, atol=1e-6)


class _PixelWise(torch.nn.Conv2d):
    """A network that reads each pixel alone (a 1 x 1 convolution): it commutes with any resampling."""
    phases_per_input = 1

    def __init__(self):
        super().__init__(1, 4, 1)
        with torch.no_grad():
            self.weight.copy_(torch.tensor([-3.0, 1.0, 2.0, 0.5]).view(4, 1, 1, 1))
            self.bias.zero_()


def test_scale_tta_maps_each_scales_probabilities_back_onto_the_grid():
    """For a network that reads each pixel alone, shrinking the picture and mapping the probabilities
    back gives the probabilities of the picture as it is (up to bilinear resampling twice), so scale
    TTA changes a prediction only by what the network reads differently at another scale; each
    pixel's probabilities still sum to one, and the scales [1.0] are the plain prediction exactly."""
    net = _PixelWise().eval()
    images = _blobs()
    plain = network.predict_scores(net, images, 1, precision="fp32")
    scaled = network.predict_scores(net, images, 1, precision="fp32", scales=(1.0, 0.9, 0.8))
    assert torch.allclose(scaled.sum(1), torch.ones(1, 64, 64), atol=1e-5)
    assert (scaled - plain).abs().max() < 0.03 and (scaled - plain).abs().mean() < 0.002
    assert torch.equal(network.predict_scores(net, images, 1, precision="fp32", scales=(1.0,)), plain)
    # A network that does not commute with scaling: the scales change what it reads.
    runtime.seed_everything(0)
    unet = network.build_network(config().network, 1).eval()
    frames = data(2)[0]
    assert not torch.allclose(network.predict_scores(unet, frames, 2, precision="fp32", scales=(1.0, 0.9)),
                              network.predict_scores(unet, frames, 2, precision="fp32"), atol=1e-3)


@pytest.mark.parametrize("scales", [[], [1.1], [0.9, 0.9], [0.5], "1.0", [True], [float("nan")]])
def test_tta_scales_outside_the_shrinking_range_are_refused(scales):
    from echoef.errors import ParamsError
    from echoef.params import Infer, build

    with pytest.raises(ParamsError, match="infer.tta_scales|tta_scales"):
        build(Infer, {"tta": False, "tta_scales": scales, "batch_size": 4, "precision": "fp32"}, "infer.")
    if isinstance(scales, list) and not any(isinstance(v, bool) for v in scales):
        with pytest.raises(ValueError, match="test-time scales"):
            network.check_tta_scales(scales)


def test_a_paired_model_reads_each_view_as_one_input():
    runtime.seed_everything(0)
    net = network.build_network(config().network, 2).eval()
    frames = data(4)[0]  # two inputs: frames 0-1 and 2-3
    with torch.no_grad():
        logits = net(frames)
        changed_es = frames.clone()
        changed_es[1] = 0
        other = net(changed_es)
    assert logits.shape == (4, 4, 32, 32)
    assert not torch.allclose(other[0], logits[0])  # the ED mask depends on the ES frame of its view
    assert torch.equal(other[2:], logits[2:])  # and on nothing outside its view
    # Batches of an odd frame count are cut at whole inputs.
    assert torch.allclose(network.predict_scores(net, frames, 3, precision="fp32"), logits.softmax(1), atol=1e-6)


def test_augmentation_draws_once_per_input():
    images, labels = data(4)
    images[1], labels[1] = images[0], labels[0]
    quiet = config(augment={"noise_std": 0.0}).augment
    paired, paired_labels = augment.augment(images, labels, quiet, torch.Generator().manual_seed(0), 2)
    assert torch.equal(paired[0], paired[1]) and torch.equal(paired_labels[0], paired_labels[1])
    single, _ = augment.augment(images, labels, quiet, torch.Generator().manual_seed(0), 1)
    assert not torch.allclose(single[0], single[1])


def test_gaussian_blur_spreads_each_image_by_its_own_sigma():
    # A unit impulse blurred with sigma s keeps its mass and spreads along each axis with the
    # variance of the discrete Gaussian cut at 3 pixels (0.215 for s = 0.5, 0.996 for s = 1);
    # sigma 0 leaves the image unchanged.
    impulses = torch.zeros(3, 1, 15, 17)
    impulses[:, 0, 7, 8] = 1.0
    blurred = augment.gaussian_blur(impulses, torch.tensor([0.0, 0.5, 1.0]), radius=3)
    assert torch.allclose(blurred[0], impulses[0], atol=1e-6)
    offsets = torch.arange(-3.0, 4.0)
    for image, variance in zip(blurred[1:], (0.2150, 0.9959)):
        assert abs(float(image.sum()) - 1.0) < 1e-5
        assert abs(float((image[0, 7, 5:12] * offsets**2).sum() / image[0, 7, 5:12].sum()) - variance) < 1e-3
        assert abs(float((image[0, 4:11, 8] * offsets**2).sum() / image[0, 4:11, 8].sum()) - variance) < 1e-3


def test_blur_off_keeps_the_augmentation_stream():
    # With blur_sigma_px 0 nothing extra is drawn: the output is the one the code gave before the
    # option existed (1865.68, pinned from commit a5a2e66); with blur the smoothed images sum lower.
    images, labels = data(4)
    for sigma_px, total in ((0.0, 1865.68), (1.0, 1414.71)):
        augmented, _ = augment.augment(images, labels, config(augment={"blur_sigma_px": sigma_px}).augment, torch.Generator().manual_seed(0))
        assert abs(float(augmented.abs().sum()) - total) < 0.05


def test_paired_training_keeps_views_together(monkeypatch):
    # Frames 2k and 2k+1 are one view's two phases, made identical here: every training batch the
    # augmentation receives must hold whole views, 3 per batch of 6 frames (the last one 1).
    images, labels = data(8)
    images[1::2], labels[1::2] = images[::2], labels[::2]
    seen, original = [], augment.augment

    def checked(batch, batch_labels, *args):
        seen.append(len(batch))
        assert torch.equal(batch[0::2], batch[1::2]) and torch.equal(batch_labels[0::2], batch_labels[1::2])
        return original(batch, batch_labels, *args)

    monkeypatch.setattr(training, "augment", checked)
    runtime.seed_everything(0)
    paired = config(network={"phases_per_input": 2}, optimisation={"batch_size": 6, "epochs": 2})
    net = network.build_network(paired.network, 2)
    state, _, history = training.Trainer(net, (images, labels), (images[:4], labels[:4]), paired, "cpu").run()
    assert seen == [6, 2, 6, 2] and len(history) == 2 and state is not None


def test_a_mixed_ensemble_trains_and_loads_each_member_with_its_own_input(tmp_path):
    # phases_per_input [1, 2]: member 0 reads frames alone, member 1 a view's two frames together,
    # both from the same frames in input order; the checkpoint rebuilds each as it was trained.
    mixed = config(network={"members": 2, "phases_per_input": [1, 2]})
    members = training.train_members(data(), data(4), mixed, "cpu")
    assert [(m["seed"], m["phases_per_input"]) for m in members] == [(3, 1), (4, 2)]
    assert members[0]["history"] == training.train_members(data(), data(4), config(), "cpu")[0]["history"]  # member 0 is the one-frame model
    network.save_checkpoint(tmp_path / "m.pt", [m["state_dict"] for m in members], mixed.network, {})
    models, _ = network.load_checkpoint(tmp_path / "m.pt")
    assert [m.phases_per_input for m in models] == [1, 2]
    assert models[1].network.encoder.conv1.weight.shape[1] == 2 and models[1].network.segmentation_head[0].out_channels == 8


@pytest.mark.parametrize("architecture", ["Unet", "UnetPlusPlus", "FPN", "DeepLabV3Plus"])
@pytest.mark.parametrize("phases", [1, 2])
def test_each_architecture_trains_a_step_and_loads_back(architecture, phases, phantom_root, tmp_path):
    """train.network.architecture picks the network by name: it trains one step on phantom frames, its
    logits have the labels' size, and its model file rebuilds the same network."""
    from echoef.io import camus
    from echoef.model import dataset

    train = config(network={"architecture": architecture, "encoder_depth": 4, "decoder_channels": [32, 16, 8, 8],
                            "phases_per_input": phases, "input_size": 64}, optimisation={"batch_size": 4})
    frames = [f for p in camus.find_patients(phantom_root)[:2] for f in camus.read_study(p).frames.values()]
    images, labels, _ = dataset.grid_tensors(frames, 64)
    runtime.seed_everything(0)
    net = network.build_network(train.network, phases)
    assert net.network.__class__.__name__ == architecture
    assert net(images[:4]).shape == (4, network.N_CLASSES, 64, 64)
    state, _, history = training.Trainer(net, (images[:4], labels[:4]), (images[4:8], labels[4:8]), train, "cpu").run()
    assert len(history) == 1 and all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    network.save_checkpoint(tmp_path / "m.pt", [state], train.network, {})
    (loaded,), saved = network.load_checkpoint(tmp_path / "m.pt")
    assert saved["model_config"]["architecture"] == architecture
    net.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(loaded(images[:4].contiguous(memory_format=torch.channels_last)), net.eval()(images[:4]))


def test_a_network_built_for_loading_is_left_uninitialised_only_where_a_load_sets_every_tensor(monkeypatch):
    """``load_checkpoint`` skips the random initialisation a strict load overwrites; a network with
    a tensor no load sets (a non-persistent buffer) is built and initialised as for training."""
    net = config().network
    empty = network.network_to_load(net, 1, "cpu")
    assert set(empty.state_dict()) == set(dict(empty.named_parameters())) | set(dict(empty.named_buffers()))
    assert {k: v.shape for k, v in empty.state_dict().items()} == {k: v.shape for k, v in network.build_network(net, 1).state_dict().items()}
    built = network.build_network

    def with_a_buffer_no_load_sets(*args):
        member = built(*args)
        member.register_buffer("scale", torch.full((3,), 2.5), persistent=False)
        return member

    monkeypatch.setattr(network, "build_network", with_a_buffer_no_load_sets)
    assert torch.equal(network.network_to_load(net, 1, "cpu").scale, torch.full((3,), 2.5))


def test_a_model_file_from_before_the_architecture_choice_loads_as_a_unet(tmp_path):
    """Older model files name no architecture and keep the smp model's keys without the wrapper's
    ``network.`` prefix: they load, as U-Nets, to the same weights."""
    net = network.build_network(config().network, 1)
    legacy = {"model_config": {k: v for k, v in dataclasses.asdict(config().network).items() if k not in ("architecture", "members")},
              "state_dicts": [{key.removeprefix("network."): value for key, value in net.state_dict().items()}]}
    torch.save(legacy, tmp_path / "old.pt")
    (loaded,), _ = network.load_checkpoint(tmp_path / "old.pt")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in net.state_dict().items())


def test_the_ef_term_is_the_error_of_the_volume_ratio():
    """Against an independent computation (numpy): soft LV areas of each (ED, ES) pair, (A_ES/A_ED)^1.5
    against the expert masks'; zero for masks predicted exactly; a pair without an expert LV left out."""
    import numpy as np

    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 4, 16, 16, generator=generator)
    target = torch.zeros(6, 16, 16, dtype=torch.long)
    target[0, 2:12, 3:11], target[1, 4:10, 4:10] = 1, 1
    target[2, 1:15, 2:14], target[3, 3:9, 5:12] = 1, 1  # pair 3 (frames 4, 5) has no expert LV
    p = np.exp(logits.numpy()) / np.exp(logits.numpy()).sum(1, keepdims=True)
    areas = p[:, 1].sum((1, 2)).reshape(-1, 2)
    truth = (target.numpy() == 1).sum((1, 2)).reshape(-1, 2)
    expected = np.mean([abs((areas[k, 1] / max(areas[k, 0], 1)) ** 1.5 - (truth[k, 1] / truth[k, 0]) ** 1.5) for k in (0, 1)])
    assert float(training.ef_ratio_loss(logits, target)) == pytest.approx(expected, rel=1e-5)
    exact = torch.nn.functional.one_hot(target, 4).permute(0, 3, 1, 2).float() * 40
    assert float(training.ef_ratio_loss(exact, target)) == pytest.approx(0, abs=1e-6)
    logits.requires_grad_(True)
    training.ef_ratio_loss(logits, target).backward()
    assert logits.grad[4:].abs().sum() == 0 and logits.grad[:4].abs().sum() > 0


def test_the_es_term_is_the_loss_of_the_es_frames_alone():
    """With es_weight, the batch loss gains that times Dice + cross-entropy of the odd (ES) frames of
    the (ED, ES) pairs: the ED frames' logits do not change the added part, and a perfect ES reading
    adds nothing."""
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(4, 4, 16, 16, generator=generator)
    target = torch.randint(0, 4, (4, 16, 16), generator=generator)
    loss_fn = training.DiceCELoss(1.0, 1.0)
    base = config().optimisation

    def added(weight, values):
        with_term = dataclasses.replace(base, es_weight=weight)
        return float(training.batch_loss(loss_fn, values, target, with_term) - training.batch_loss(loss_fn, values, target, base))

    es_alone = float(loss_fn(logits[1::2], target[1::2]))
    assert added(0.7, logits) == pytest.approx(0.7 * es_alone, rel=1e-5)
    other_ed = logits.clone()
    other_ed[0::2] = torch.randn(2, 4, 16, 16, generator=generator)
    assert added(0.7, other_ed) == pytest.approx(0.7 * es_alone, rel=1e-5)
    exact_es = logits.clone()
    exact_es[1::2] = torch.nn.functional.one_hot(target[1::2], 4).permute(0, 3, 1, 2).float() * 40
    assert added(0.7, exact_es) == pytest.approx(0, abs=1e-4)
    assert float(training.batch_loss(loss_fn, logits, target, base)) == pytest.approx(float(loss_fn(logits, target)))


@pytest.mark.parametrize("term", ["ef_weight", "es_weight"])
def test_with_the_ef_or_es_term_a_one_frame_network_is_given_ed_and_es_together(monkeypatch, term):
    seen = []
    original = training.Trainer.train_step

    def recording(self, idx):
        seen.append(idx.tolist())
        return original(self, idx)

    monkeypatch.setattr(training.Trainer, "train_step", recording)
    trained(config(optimisation={term: 0.5, "epochs": 2}))
    assert seen and all(len(batch) % 2 == 0 and all(b == a + 1 and a % 2 == 0 for a, b in zip(batch[::2], batch[1::2]))
                        for batch in seen)
    with pytest.raises(Exception, match="must be even"):
        config(optimisation={term: 0.5, "batch_size": 3})


class Interrupted(Exception):
    pass


def _interrupting_log(rows, at):
    """A log that records (member, epoch, train_loss) and stops the run when it reaches ``at``."""
    def log(member, epoch, row):
        if (member, epoch) == at:
            raise Interrupted
        rows.append((member, epoch, row["train_loss"]))
    return log


def test_an_interrupted_training_goes_on_to_the_networks_of_an_uninterrupted_one(tmp_path):
    # Two members of three epochs, with weight averaging (its own state) and the one-cycle schedule
    # (the learning rate depends on the step): killed in member 1's last epoch, the saved states
    # (member 0 finished, member 1 after two epochs) let a second run train member 1's last epoch only.
    two = config(network={"members": 2}, optimisation={"epochs": 3, "ema_decay": 0.9})
    rows = []
    whole = training.train_members(data(), data(4), two, "cpu", lambda m, e, row: rows.append((m, e, row["train_loss"])))
    with pytest.MonkeyPatch.context() as patch:
        first_rows, second_rows = [], []
        patch.setattr(resume.Resume, "due", lambda self, last_epoch: True)  # a save after every epoch
        with pytest.raises(Interrupted):
            training.train_members(data(), data(4), two, "cpu", _interrupting_log(first_rows, (1, 2)), tmp_path / "resume")
        assert len(list((tmp_path / "resume").glob("*.resume.pt"))) == 2
        trained_epochs = []
        original = training.Trainer.train_epoch
        patch.setattr(training.Trainer, "train_epoch", lambda self, epoch: trained_epochs.append((self.config.seed, epoch)) or original(self, epoch))
        again = training.train_members(data(), data(4), two, "cpu", lambda m, e, row: second_rows.append((m, e, row["train_loss"])),
                                       tmp_path / "resume")
    assert trained_epochs == [(4, 2)]
    assert first_rows == rows[:5] and second_rows == rows  # the curves are whole again, every row as before
    assert [m["resumed_after_epoch"] for m in again] == [3, 2] and all(m["seconds_before"] > 0 for m in again)
    for a, b in zip(whole, again, strict=True):
        assert a["history"] == b["history"] and a["best_epoch"] == b["best_epoch"]
        assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    resume.clear(tmp_path / "resume")
    assert not (tmp_path / "resume").exists()


def test_a_saved_state_is_resumed_only_by_the_training_it_came_from(tmp_path):
    # Another seed, other data or another schedule is another key: its state is removed, not resumed;
    # a damaged state is set aside with a warning and the training starts afresh.
    folder = tmp_path / "resume"
    base = config(optimisation={"epochs": 2})
    keys = {}
    for name, (train, images) in {"base": (base, data()), "seed": (config(seed=4, optimisation={"epochs": 2}), data()),
                                  "data": (base, data(n=10)), "epochs": (config(optimisation={"epochs": 3}), data())}.items():
        keys[name] = resume.resume_key(train, 1, images, data(4), "cpu")
    assert len(set(keys.values())) == 4
    alone = training.train_members(data(), data(4), base, "cpu")[0]
    training.train_members(data(), data(4), config(seed=4, optimisation={"epochs": 2}), "cpu", resume_folder=folder)
    assert [p.name for p in folder.glob("*.resume.pt")] == [f"{keys['seed']}.resume.pt"]
    again = training.train_members(data(), data(4), base, "cpu", resume_folder=folder)[0]
    assert [p.name for p in folder.glob("*.resume.pt")] == [f"{keys['base']}.resume.pt"]  # the other key's state is gone
    assert again["resumed_after_epoch"] == 0 and again["history"] == alone["history"]
    (folder / f"{keys['base']}.resume.pt").write_bytes(b"PK\x03\x04 cut short")
    with pytest.warns(UserWarning, match="not usable"):
        damaged = training.train_members(data(), data(4), base, "cpu", resume_folder=folder)[0]
    assert damaged["resumed_after_epoch"] == 0 and damaged["history"] == alone["history"]
    assert training.train_members(data(), data(4), base, "cpu", resume_folder=folder)[0]["resumed_after_epoch"] == 2


def test_the_resume_folder_is_never_someone_elses(tmp_path):
    from echoef.errors import ForeignFolderError

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.resume.pt").write_text("a user's file")
    with pytest.raises(ForeignFolderError):
        training.train_members(data(), data(4), config(), "cpu", resume_folder=foreign)
    resume.clear(foreign)  # not EchoEF's: left alone
    assert (foreign / "notes.resume.pt").read_text() == "a user's file"
    ours = tmp_path / "ours"
    training.train_members(data(), data(4), config(), "cpu", resume_folder=ours)
    (ours / "kept.txt").write_text("added by hand")
    resume.clear(ours)
    assert sorted(p.name for p in ours.iterdir()) == [".echoef", "kept.txt"]


def test_a_state_that_cannot_be_saved_leaves_the_training_going(tmp_path, monkeypatch):
    # A full disk mid-save: a warning, no half-written file, and the networks of a training without saves.
    def full_disk(state, path):
        Path(path).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(resume.torch, "save", full_disk)
    with pytest.warns(UserWarning, match="not saved.*No space left"):
        member = training.train_members(data(), data(4), config(), "cpu", resume_folder=tmp_path)[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".echoef"]
    assert member["history"] == training.train_members(data(), data(4), config(), "cpu")[0]["history"]
