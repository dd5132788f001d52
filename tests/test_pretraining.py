"""Pretraining encoders (#14): the mLSTM maths, the two objectives, `seismag pretrain` on SeisBench
datasets and miniSEED folders (exact resume), and fine-tuning a magnitude head on an encoder."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")


def _recurrent_mlstm(q, k, v, i_pre, f_pre):
    """The mLSTM recurrence of Beck et al. (2024), step by step (the definition)."""
    b, h, t, d = q.shape
    out = torch.zeros_like(v)
    for bi in range(b):
        for hi in range(h):
            c = torch.zeros(d, d, dtype=q.dtype)
            n = torch.zeros(d, dtype=q.dtype)
            for s in range(t):
                f = torch.sigmoid(f_pre[bi, hi, s])
                i = torch.exp(i_pre[bi, hi, s])
                c = f * c + i * torch.outer(v[bi, hi, s], k[bi, hi, s])
                n = f * n + i * k[bi, hi, s]
                qs = q[bi, hi, s] / d**0.5
                out[bi, hi, s] = c @ qs / torch.clamp((n @ qs).abs(), min=1.0)
    return out


@pytest.mark.parametrize("t", [5, 33, 70])
def test_mlstm_parallel_and_chunkwise_equal_the_recurrence(t):
    from seismag.models.mlstm import mlstm_chunkwise, mlstm_parallel

    g = torch.Generator().manual_seed(t)
    q, k, v = (torch.randn(2, 2, t, 4, generator=g, dtype=torch.float64) for _ in range(3))
    i_pre = 2 * torch.randn(2, 2, t, generator=g, dtype=torch.float64)
    f_pre = 2 * torch.randn(2, 2, t, generator=g, dtype=torch.float64)
    ref = _recurrent_mlstm(q, k, v, i_pre, f_pre)
    par = mlstm_parallel(q, k, v, i_pre, f_pre)
    chunked = mlstm_chunkwise(q, k, v, i_pre, f_pre, chunk=16)
    # 1e-6 is the normaliser's epsilon, the only difference from the recurrence.
    assert torch.allclose(par, ref, atol=1e-4)
    assert torch.allclose(chunked, par, atol=1e-10)
    # Large gate values (exp(40)) stay finite thanks to the running maximum.
    big = mlstm_chunkwise(q, k, v, i_pre + 40, f_pre, chunk=16)
    assert torch.isfinite(big).all()


def test_span_mask_and_distractors():
    from seismag.models.encoders import contrastive_logits, span_mask

    g = torch.Generator().manual_seed(0)
    mask = span_mask(64, 750, 0.65, 10, g)
    share = float(mask.float().mean())
    assert mask.shape == (64, 750) and 0.4 < share < 0.6  # ~1 - exp(-0.65), spans overlap
    # Context equal to its own targets: the positive (column 0) is the only perfect match, so
    # no distractor may be the step itself.
    x = torch.randn(3, 50, 8, generator=g)
    logits = contrastive_logits(x, x, negatives=20, temperature=0.1, generator=g)
    assert logits.shape == (3, 50, 21)
    assert torch.allclose(logits[..., 0], torch.full((3, 50), 10.0), atol=1e-4)
    assert (logits[..., 1:] < 10.0 - 1e-3).all()


@pytest.mark.parametrize("name", ["ConvDownEncoderContrastive", "BidirAutoregEncoder"])
def test_encoders_follow_their_cards_and_learn(name):
    from seismag.models.encoder_card import get_encoder_card
    from seismag.models.encoders import build_encoder

    card = get_encoder_card(name)
    model = build_encoder(card)
    x = torch.randn(4, card.in_channels, card.in_samples) * 0.1
    model.eval()
    with torch.no_grad():
        emb = model(x)
    assert emb.shape == (4, card.steps(), card.embed_dim) and card.steps() == 751
    model.train()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    losses = []
    for _ in range(6):  # one fixed batch: the objective must go down
        gen = torch.Generator().manual_seed(1)
        torch.manual_seed(1)
        loss, stats = model.pretrain_loss(x, 2.0, gen)
        losses.append(float(loss.detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < losses[0]
    if card.objective == "contrastive":
        assert 1.0 <= stats["perplexity"] <= 640 and 0.0 <= stats["accuracy"] <= 1.0
    else:
        assert stats["unexplained"] > 0


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from seismag.training.synthetic import generate_dataset

    return generate_dataset(tmp_path_factory.mktemp("tiny_pre"), 6, seed=3, progress=False)


def test_pretrain_resumes_exactly_and_records_history(tiny_data, tmp_path):
    from safetensors.torch import load_file

    from seismag.training.pretrain import PretrainError, pretrain

    kw = {"batch_size": 4, "threads": 2, "progress": False, "device": "cpu", "log_every": 1}
    straight = pretrain("BidirAutoregEncoder", [tiny_data], tmp_path / "a", steps=4, **kw)
    # Interrupted by the wall-clock budget after its first step, then resumed to the end.
    pretrain("BidirAutoregEncoder", [tiny_data], tmp_path / "b", steps=4, max_minutes=1e-6, **kw)
    first = json.loads((tmp_path / "b" / "history.json").read_text())["state"]
    assert first["step"] == 1 and first["stopped"] == "time_budget"
    resumed = pretrain(
        "BidirAutoregEncoder", [tiny_data], tmp_path / "b", steps=4, resume=True, **kw
    )
    a, b = load_file(str(straight)), load_file(str(resumed))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    hist = json.loads((tmp_path / "b" / "history.json").read_text())
    assert hist["state"]["step"] == 4 and hist["state"]["stopped"] == "steps"
    assert [h["step"] for h in hist["state"]["history"]] == [1, 2, 3, 4]
    assert all(h["windows_per_s"] > 0 for h in hist["state"]["history"])
    assert hist["state"]["dev"][-1]["step"] == 4
    with pytest.raises(PretrainError, match="nothing to resume"):
        pretrain("BidirAutoregEncoder", [tiny_data], tmp_path / "c", steps=2, resume=True, **kw)


def test_pretrain_on_a_folder_of_miniseed(tmp_path):
    from obspy import Stream, Trace, UTCDateTime

    from seismag.models.encoder_card import get_encoder_card
    from seismag.training.pretrain import PretrainError, open_sources, pretrain

    folder = tmp_path / "mseed"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for sta in ("AAA", "BBB"):
        st = Stream(
            Trace(
                rng.normal(0, 1e-6, 4000).astype(np.float32),
                {
                    "network": "XX",
                    "station": sta,
                    "channel": f"HH{c}",
                    "sampling_rate": 100.0,
                    "starttime": UTCDateTime(2024, 1, 1),
                },
            )
            for c in "ZNE"
        )
        st.write(str(folder / f"{sta}.mseed"), format="MSEED")
    card = get_encoder_card("ConvDownEncoderContrastive")
    source = open_sources(card, [folder])
    assert len(source) == 2
    x = source.batch(np.random.default_rng(1), 3)
    assert x.shape == (3, 3, card.in_samples)
    assert np.allclose(x.reshape(3, -1).std(axis=1), 1.0, atol=0.05)  # the card's std scale
    out = pretrain(
        "ConvDownEncoderContrastive",
        [folder],
        tmp_path / "run",
        steps=2,
        batch_size=2,
        threads=2,
        progress=False,
        device="cpu",
    )
    hist = json.loads((tmp_path / "run" / "history.json").read_text())
    assert out.is_file() and "perplexity" in hist["state"]["history"][-1]
    short = tmp_path / "short"
    short.mkdir()
    Stream(Trace(np.zeros(500, np.float32), {"channel": "HHZ", "sampling_rate": 100.0})).write(
        str(short / "x.mseed"), format="MSEED"
    )
    with pytest.raises(PretrainError, match="samples"):
        open_sources(card, [short])


def test_fine_tune_and_linear_probe_on_a_pretrained_encoder(tiny_data, tmp_path):
    from safetensors.torch import load_file

    from seismag.training.pretrain import pretrain
    from seismag.training.train import TrainingError, train

    enc = pretrain(
        "BidirAutoregEncoder",
        [tiny_data],
        tmp_path / "pre",
        steps=1,
        batch_size=2,
        threads=2,
        progress=False,
        device="cpu",
    )
    pretrained = load_file(str(enc))
    kw = {"batch_size": 4, "limit_train": 8, "threads": 2, "progress": False, "device": "cpu"}
    # The encoder frozen for the first steps (here all of the first epoch's two): the best
    # weights (after it) keep the encoder as pretrained, while the head has moved.
    best = train(
        "BidirAutoregMag",
        tiny_data,
        tmp_path / "ft",
        epochs=1,
        init_encoder=enc,
        freeze_encoder_steps=2,
        **kw,
    )
    tuned = load_file(str(best))
    assert all(torch.equal(tuned[f"encoder.{k}"], v) for k, v in pretrained.items())
    config = json.loads((tmp_path / "ft" / "history.json").read_text())["config"]
    assert config["init_encoder"] == str(enc) and config["freeze_encoder_steps"] == 2
    # Not frozen: the first step moves the encoder (max_steps ends the run within the epoch).
    train(
        "BidirAutoregMag",
        tiny_data,
        tmp_path / "ft2",
        epochs=3,
        init_encoder=enc,
        freeze_encoder_steps=0,
        max_steps=1,
        **kw,
    )
    moved = load_file(str(tmp_path / "ft2" / "checkpoint" / "model.safetensors"))
    assert any(not torch.equal(moved[f"encoder.{k}"], v) for k, v in pretrained.items())
    state = json.loads((tmp_path / "ft2" / "checkpoint" / "state.json").read_text())
    assert state["state"]["global_step"] == 1 and state["state"]["stopped"] == "max_steps"
    # The linear probe: a linear head, the encoder never moves.
    probe = train(
        "BidirAutoregMag",
        tiny_data,
        tmp_path / "probe",
        epochs=2,
        init_encoder=enc,
        linear_probe=True,
        **kw,
    )
    held = load_file(str(probe))
    assert "head.weight" in held and all(
        torch.equal(held[f"encoder.{k}"], v) for k, v in pretrained.items()
    )
    with pytest.raises(TrainingError, match="holds BidirAutoregEncoder"):
        train("ConvDownContrastiveMag", tiny_data, tmp_path / "x", epochs=1, init_encoder=enc, **kw)
    with pytest.raises(TrainingError, match="no pretraining encoder"):
        train("PhaseNetMag", tiny_data, tmp_path / "y", epochs=1, init_encoder=enc, **kw)


def test_pretrain_cli_errors(tmp_path):
    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "seismag", *args], capture_output=True, text=True, timeout=120
        )

    r = run("pretrain", "NoSuchEncoder", "--data", str(tmp_path))
    assert r.returncode == 2 and "unknown encoder 'NoSuchEncoder'" in r.stderr
    r = run("pretrain", "BidirAutoregEncoder", "--data", str(tmp_path / "missing"))
    assert r.returncode == 2 and "data not found" in r.stderr
    r = run("train", "BidirAutoregMag", "--data", str(tmp_path), "--init-encoder", "x")
    assert r.returncode != 0 and "Traceback" not in r.stderr
