"""The stage specification (STAGE_SPECS), the IAR cluster loss against a hand computation, and the
shared training helpers (schedule, metrics log, resume check)."""
import json
import math

import pytest
import torch

from coarse2fine.config import TrainConfig, UserError
from coarse2fine.stages import STAGE_SPECS, ClusterLoss, cluster_logits, stage_config, stage_loss, stage_spec, token_ce
from coarse2fine.training.common import MetricsLog, check_resume, read_metrics, warmup_cosine


def test_stage_specs_give_vocabularies_attention_and_batches():
    K, C = 64, 8
    assert set(STAGE_SPECS) == {"coarse", "fine", "baseline"}
    b, c, f = (stage_config("GPT-tiny", s, K, C, 3, 4) for s in ("baseline", "coarse", "fine"))
    assert (b.vocab_size, b.input_vocab_size, b.causal) == (K, 0, True)
    assert (c.vocab_size, c.input_vocab_size, c.causal) == (C, 0, True)
    assert (f.vocab_size, f.input_vocab_size, f.causal) == (K, C, False)
    codes = torch.arange(16).reshape(1, 16) % K
    coarse = codes % C
    tok, tgt = STAGE_SPECS["baseline"].batch(codes, None)
    assert torch.equal(tok, codes[:, :-1]) and torch.equal(tgt, codes)
    tok, tgt = STAGE_SPECS["coarse"].batch(codes, coarse)
    assert torch.equal(tok, coarse[:, :-1]) and torch.equal(tgt, coarse)
    tok, tgt = STAGE_SPECS["fine"].batch(codes, coarse)
    assert torch.equal(tok, coarse) and torch.equal(tgt, codes)
    with pytest.raises(UserError, match="unknown stage"):
        stage_config("GPT-tiny", "medium", K, C, 3, 4)


def _hand_cluster_ce(logits, codes, phi, num_coarse):
    """Plain Python: cluster logit = log sum_{k in cluster} exp(logit_k); CE of the true cluster."""
    total, n = 0.0, 0
    for b in range(logits.shape[0]):
        for i in range(logits.shape[1]):
            row = logits[b, i].tolist()
            cl = []
            for c in range(num_coarse):
                mem = [row[k] for k in range(len(row)) if phi[k] == c]
                cl.append(math.log(sum(math.exp(v) for v in mem)) if mem else -math.inf)
            true = phi[int(codes[b, i])]
            total += -(cl[true] - math.log(sum(math.exp(v) for v in cl if v > -math.inf)))
            n += 1
    return total / n


def test_cluster_loss_matches_a_hand_computation():
    g = torch.Generator().manual_seed(0)
    phi = [0, 0, 1, 2, 2, 2]  # K = 6 codes in 3 clusters; cluster 3 is empty
    logits = torch.randn(2, 3, 6, generator=g) * 3
    codes = torch.tensor([[0, 2, 5], [3, 1, 4]])
    term = ClusterLoss(torch.tensor(phi), 4, 0.7)
    assert term(logits, codes).item() == pytest.approx(0.7 * _hand_cluster_ce(logits, codes, phi, 4), rel=1e-6)
    # exact far from zero too (logits of 1e3 overflow a plain exp)
    big = logits + 1000.0
    assert cluster_logits(big, torch.tensor(phi), 4)[..., :3].isfinite().all()
    assert term(big, codes).item() == pytest.approx(term(logits, codes).item(), rel=1e-5)

    class Fixed(torch.nn.Module):  # a "model" returning the logits above behind a class position
        def forward(self, tokens, cond):
            return logits

    loss, _ = stage_loss(Fixed(), stage_spec("baseline"), None, None, codes, cluster=term)
    plain, _ = token_ce(logits, codes)
    assert loss.item() == pytest.approx(plain.item() + term(logits, codes).item(), rel=1e-6)


def test_cluster_loss_equals_the_cross_entropy_of_the_cluster_softmax_with_its_gradient():
    """The target-cluster form (and the one sharing stage_loss's log-softmax) is the cross-entropy over
    cluster_logits, value and gradient, for unequal clusters and logits far apart."""
    g = torch.Generator().manual_seed(1)
    k, c = 40, 6
    phi = torch.randint(0, c - 1, (k,), generator=g)  # unequal sizes, cluster c-1 empty
    x = (torch.randn(3, 5, k, generator=g) * 30).requires_grad_()
    codes = torch.randint(0, k, (3, 5), generator=g)
    ref = torch.nn.functional.cross_entropy(cluster_logits(x, phi, c).reshape(-1, c), phi[codes].reshape(-1))
    (g_ref,) = torch.autograd.grad(ref, x)
    term = ClusterLoss(phi, c, 1.0)
    for out in (term(x, codes), term(x, codes, log_probs=x.log_softmax(-1))):
        (g_out,) = torch.autograd.grad(out, x)
        assert out.item() == pytest.approx(ref.item(), rel=1e-5)
        assert torch.allclose(g_out, g_ref, atol=1e-6)


def test_warmup_cosine_schedule():
    assert warmup_cosine(0, 4, 100, 0.1) == 0.25 and warmup_cosine(3, 4, 100, 0.1) == 1.0
    assert warmup_cosine(4, 4, 100, 0.1) == 1.0 and warmup_cosine(100, 4, 100, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(52, 4, 100, 0.1) == pytest.approx(0.55)
    assert warmup_cosine(50, 0, 100, 0.1, cosine=False) == 1.0


def test_metrics_log_refuses_nan_and_tolerates_a_partial_last_line(tmp_path):
    p = tmp_path / "metrics.jsonl"
    log = MetricsLog(p)
    for s in (1, 2, 3):
        log.write({"step": s, "loss": 1.0 / s})
    with pytest.raises(UserError, match="step 4: a non-finite metric"):
        log.write({"step": 4, "loss": float("nan")})
    log.close()
    assert [json.loads(x)["step"] for x in p.read_text().splitlines()] == [1, 2, 3]
    with p.open("a") as f:
        f.write('{"step": 4, "lo')
    assert [r["step"] for r in read_metrics(p)] == [1, 2, 3]
    MetricsLog(p, resume_step=2).close()  # resume from step 2: later lines and the partial one go
    assert p.read_text() == '{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.5}\n'
    p.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(UserError, match="line 2"):
        read_metrics(p)


def test_check_resume_names_every_changed_setting():
    run = TrainConfig(steps=10, lr=1e-4)
    assert check_resume(run, TrainConfig(steps=10, lr=1e-4, grad_accum=2), 5, "R") is None  # layout may change
    with pytest.raises(UserError, match=r"--lr: the run has 0.0001, this command asks 0.01; --seed: the run has 0"):
        check_resume(run, TrainConfig(steps=10, lr=1e-2, seed=1), 5, "R")
    assert check_resume(run, TrainConfig(steps=20, lr=1e-4), 5, "R") == {"at_step": 5, "steps_from": 10,
                                                                         "steps_to": 20}
    with pytest.raises(UserError, match="--steps 5: the run is already at step 5"):
        check_resume(run, TrainConfig(steps=5, lr=1e-4), 5, "R")


def test_restricted_head_from_hidden_states_equals_the_full_logits_loss():
    """stage_loss's restricted head (member rows only, cluster by cluster) gives the loss, accuracy and
    gradients of fine_ce on the full K-way logits, with empty and uneven clusters."""
    from coarse2fine.models import Transformer
    from coarse2fine.stages import fine_ce
    from coarse2fine.tokenizer.clustering import member_table

    K, C = 64, 8
    g = torch.Generator().manual_seed(0)
    phi = torch.randint(0, C - 1, (K,), generator=g)  # cluster C-1 stays empty, sizes uneven
    members, _ = member_table(phi, C)
    codes = torch.randint(0, K, (3, 16), generator=g)
    coarse, cond = phi[codes], torch.tensor([0, 1, 2])
    torch.manual_seed(0)
    model = Transformer(stage_config("GPT-tiny", "fine", K, C, 3, 4, token_dropout_p=0.0, resid_dropout_p=0.0,
                                     ffn_dropout_p=0.0, class_dropout_prob=0.0))
    torch.nn.init.normal_(model.output.weight, std=0.5)  # not the zero init: distinct logits
    loss, acc = stage_loss(model, stage_spec("fine"), coarse, cond, codes, members)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    ref_loss, ref_acc = fine_ce(model(coarse, cond)[:, 1:], codes, coarse, members)
    ref_loss.backward()
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-6)
    assert acc.item() == ref_acc.item() and 0 < acc.item() < 1
    for n, p in model.named_parameters():
        assert torch.allclose(grads[n], p.grad, rtol=1e-4, atol=1e-6), (n, (grads[n] - p.grad).abs().max())
