"""The contrastive losses: pure functions of tensors, distributed-aware through `dist`.

Convention under DDP: each rank scores its LOCAL anchors (rows) against GLOBAL
candidates gathered with gradients, and averages over its local rows. DDP's gradient
averaging then reproduces the single-process gradient on the concatenated batch. With
one process (no process group) every function is the textbook loss.

Inputs are checked: a bad temperature or mismatched shapes raise ValueError instead of
producing NaNs many steps later. No check reads a tensor's values (that would make the
GPU wait), except `temperature`/`epsilon`, which are Python floats.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from contrastkit.training import dist


def _check_positive(value: float, name: str) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def _check_matrix(x: Tensor, name: str) -> None:
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty [B, d] matrix, got shape {tuple(x.shape)}")


def _check_pair(a: Tensor, b: Tensor, names: str) -> None:
    first, second = names.split(",")
    _check_matrix(a, first)
    _check_matrix(b, second)
    if a.shape != b.shape:
        raise ValueError(f"{names} differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")


def _local_labels(batch: int, device: torch.device) -> Tensor:
    """int64 [B]: where this rank's rows sit among the gathered (global) columns."""
    return torch.arange(batch, device=device) + dist.rank() * batch


def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.5) -> Tensor:
    """SimCLR's NT-Xent. z1, z2: [B, d] projections of two views (any norm).

    Each of the 2B local anchors is scored against all 2N = 2B * world candidates (both
    views, gathered with gradients) except itself; its positive is the other view of the
    same image. Returns the mean cross-entropy over the local anchors (scalar).
    """
    _check_pair(z1, z2, "z1,z2")
    _check_positive(temperature, "temperature")
    batch = z1.shape[0]
    z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    g1, g2 = dist.gather_with_grad(z1), dist.gather_with_grad(z2)
    n_global = g1.shape[0]
    anchors = torch.cat([z1, z2])  # [2B, d]
    candidates = torch.cat([g1, g2])  # [2N, d]: view 1 of every image, then view 2
    logits = anchors @ candidates.T / temperature  # [2B, 2N]
    own = _local_labels(batch, z1.device)
    self_idx = torch.cat([own, own + n_global])  # an anchor's own column
    pos_idx = torch.cat([own + n_global, own])  # the other view's column
    rows = torch.arange(2 * batch, device=z1.device)
    # -inf: exp() gives exactly 0, so the anchor is simply not a candidate.
    logits = logits.index_put((rows, self_idx), logits.new_tensor(-math.inf))
    return F.cross_entropy(logits, pos_idx)


def info_nce(q: Tensor, k: Tensor, queue: Tensor | None, temperature: float = 0.2) -> Tensor:
    """MoCo's InfoNCE. q, k: [B, d] queries and keys (normalised here; unit already in MoCo).

    queue: [K, d] unit negatives (a buffer; never receives gradients). Logits per query
    are [q·k, q·queue_1..K] / T with the positive at index 0. With queue None, the keys of
    the whole global batch are the candidates (positive: the query's own key); keys are
    gathered with gradients only when `k` requires them (MoCo's keys do not).
    Returns the mean cross-entropy over local queries (scalar).
    """
    _check_pair(q, k, "q,k")
    _check_positive(temperature, "temperature")
    q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
    if queue is None:
        keys = dist.gather_with_grad(k) if k.requires_grad else dist.gather_no_grad(k)
        logits = q @ keys.T / temperature  # [B, N]
        return F.cross_entropy(logits, _local_labels(q.shape[0], q.device))
    if queue.ndim != 2 or queue.shape[1] != q.shape[1]:
        raise ValueError(f"queue must be [K, {q.shape[1]}], got shape {tuple(queue.shape)}")
    pos = (q * k).sum(dim=1, keepdim=True)  # [B, 1]
    neg = q @ queue.detach().to(q.dtype).T  # [B, K]
    logits = torch.cat([pos, neg], dim=1) / temperature
    labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return F.cross_entropy(logits, labels)


def byol_loss(p: Tensor, z: Tensor) -> Tensor:
    """BYOL's regression loss: mean over B of 2 - 2 cos(p, z) (in [0, 4]; scalar).

    p: [B, d] online predictions; z: [B, d] target projections, detached here (the
    stop-gradient is part of the method, so callers cannot forget it).
    """
    _check_pair(p, z, "p,z")
    cos = (F.normalize(p, dim=1) * F.normalize(z.detach(), dim=1)).sum(dim=1)
    return (2 - 2 * cos).mean()


@torch.no_grad()
def sinkhorn(scores: Tensor, epsilon: float = 0.05, iterations: int = 3) -> Tensor:
    """SwAV's Sinkhorn-Knopp codes. scores: [B, K] (this rank's rows) -> Q: [B, K], no grad.

    Equal-partition transport over the GLOBAL batch of N = B * world samples: prototype
    sums are all-reduced, so the result equals the single-process Sinkhorn on the
    concatenated batch. Rows of Q sum to 1; after enough iterations each prototype's
    column sums to N / K over the global batch. Runs in float32 at least (bf16/fp16 are
    upcast; float64 stays float64) and returns that dtype.
    """
    _check_matrix(scores, "scores")
    _check_positive(epsilon, "epsilon")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    work = torch.promote_types(scores.dtype, torch.float32)
    s = scores.detach().to(work)
    # A global max makes exp() safe from overflow; a constant factor cancels in the
    # first normalisation, so the result is the same as without it.
    top = s.max().reshape(1)
    if dist.is_dist():
        torch.distributed.all_reduce(top, op=torch.distributed.ReduceOp.MAX)
    q = torch.exp((s - top) / epsilon).T  # [K, B]
    n_protos, n_global = q.shape[0], q.shape[1] * dist.world_size()
    q /= dist.all_reduce_sum_(q.sum().reshape(1))
    for _ in range(iterations):
        q /= dist.all_reduce_sum_(q.sum(dim=1, keepdim=True))  # each prototype: mass 1/K
        q /= n_protos
        q /= q.sum(dim=0, keepdim=True)  # each sample: mass 1/N (samples are local)
        q /= n_global
    return (q * n_global).T


def swav_loss(scores: list[Tensor], codes: list[Tensor], temperature: float = 0.1) -> Tensor:
    """SwAV's swapped prediction. Scalar.

    scores[v]: [B, K] prototype scores of crop v (global crops first, then small ones);
    codes[i]: [B, K] Sinkhorn codes of global crop i (targets, detached). For every
    i and every crop v != i the loss is CE(codes[i], softmax(scores[v] / T)) averaged
    over B; the result is the mean over all such (i, v) pairs.
    """
    _check_positive(temperature, "temperature")
    if not codes or len(scores) < 2 or len(codes) > len(scores):
        raise ValueError(
            f"need >= 1 code set and >= 2 crops with codes <= crops, "
            f"got {len(codes)} codes and {len(scores)} crops"
        )
    for i, t in enumerate([*scores, *codes]):
        _check_matrix(t, f"scores/codes[{i}]")
        if t.shape != scores[0].shape:
            raise ValueError(f"all scores and codes must be {tuple(scores[0].shape)}")
    # float32 at least: bf16 log-probabilities are too coarse for a cross-entropy target.
    log_p = [
        F.log_softmax(s.to(torch.promote_types(s.dtype, torch.float32)) / temperature, dim=1)
        for s in scores
    ]
    terms = [
        -(code.detach().to(lp.dtype) * lp).sum(dim=1).mean()
        for i, code in enumerate(codes)
        for v, lp in enumerate(log_p)
        if v != i
    ]
    return torch.stack(terms).mean()


def _positive_mask(groups: Tensor | None, batch: int, device: torch.device) -> Tensor | None:
    """bool [B, N]: local row i and global column j are a positive pair when their
    caption groups are equal; None when `groups` is None (only own pairs are positive).

    groups: [B] ids of this rank's rows (any integer dtype), equal for interchangeable
    captions and the same id meaning the same caption on every rank. They are gathered
    without gradients in rank order, the order the features are gathered in, so column
    j is the same sample for the mask and for the logits. A row's own column always
    matches itself, so the diagonal is positive.
    """
    if groups is None:
        return None
    if groups.shape != (batch,):
        raise ValueError(f"groups must be [{batch}], got shape {tuple(groups.shape)}")
    all_groups = dist.gather_no_grad(groups.to(device))
    return groups.to(device)[:, None] == all_groups[None, :]


def _soft_cross_entropy(logits: Tensor, positives: Tensor) -> Tensor:
    """Mean over rows of the cross-entropy against targets spread uniformly over each
    row's positives. logits: [B, N]; positives: bool [B, N], >= 1 True per row. Scalar.

    With one positive per row this is F.cross_entropy at that column.
    """
    targets = positives.to(logits.dtype)
    targets = targets / targets.sum(dim=1, keepdim=True)
    return F.cross_entropy(logits, targets)


def clip_loss(
    image: Tensor, text: Tensor, logit_scale: Tensor, groups: Tensor | None = None
) -> Tensor:
    """CLIP's symmetric cross-entropy. image, text: [B, d] (normalised here). Scalar.

    logit_scale: a one-element tensor, the multiplier itself (exp already applied,
    clamped by the caller). Local images are scored against the global texts and local
    texts against the global images (both gathered with gradients); the positive of
    row i is its own pair. Returns (CE_image + CE_text) / 2.

    groups: None, or [B] caption group ids (see `_positive_mask`) for multi-positive
    targets: every pair whose groups match is a positive, and each row's target is the
    uniform distribution over its positives, -(1/P_i) sum_{j positive} log softmax_ij,
    in both directions (the mask is symmetric in image and text because a pair's
    image and text carry the same id). Without duplicates it is the plain loss; None
    keeps the plain integer-target cross-entropy (no mask is built).
    """
    _check_pair(image, text, "image,text")
    if logit_scale.numel() != 1:
        raise ValueError(f"logit_scale must hold one value, got shape {tuple(logit_scale.shape)}")
    positives = _positive_mask(groups, image.shape[0], image.device)
    image, text = F.normalize(image, dim=1), F.normalize(text, dim=1)
    all_image, all_text = dist.gather_with_grad(image), dist.gather_with_grad(text)
    scale = logit_scale.reshape(())
    logits_image = scale * image @ all_text.T  # [B, N]
    logits_text = scale * text @ all_image.T  # [B, N]
    if positives is None:
        labels = _local_labels(image.shape[0], image.device)
        loss_image = F.cross_entropy(logits_image, labels)
        loss_text = F.cross_entropy(logits_text, labels)
    else:
        loss_image = _soft_cross_entropy(logits_image, positives)
        loss_text = _soft_cross_entropy(logits_text, positives)
    return (loss_image + loss_text) / 2


def siglip_loss(
    image: Tensor,
    text: Tensor,
    logit_scale: Tensor,
    logit_bias: Tensor,
    groups: Tensor | None = None,
) -> Tensor:
    """SigLIP's pairwise sigmoid loss (Zhai et al. 2023). image, text: [B, d] (normalised
    here); logit_scale (the multiplier t, exp applied) and logit_bias b: one value each.

    Every image-text pair is its own binary problem: logit t * x_i . y_j + b, label +1 for
    a row's own pair and -1 for every other. Local images are scored against the global
    texts (gathered with gradients), so each (image, text) pair of the global batch is
    counted once; the sum over texts is averaged over the local images:
        -(1/B) sum_i sum_j log sigmoid(z_ij * (t x_i . y_j + b)).
    Under DDP the ranks' averages then give the single-process loss of the global batch.

    groups: None, or [B] caption group ids (see `_positive_mask`): z_ij = +1 for every
    pair whose groups match (a copy of image i's caption is a correct caption for it),
    -1 otherwise. None: z_ij = +1 only for j = i.
    """
    _check_pair(image, text, "image,text")
    for value, name in ((logit_scale, "logit_scale"), (logit_bias, "logit_bias")):
        if value.numel() != 1:
            raise ValueError(f"{name} must hold one value, got shape {tuple(value.shape)}")
    positives = _positive_mask(groups, image.shape[0], image.device)
    image, text = F.normalize(image, dim=1), F.normalize(text, dim=1)
    all_text = dist.gather_with_grad(text)
    logits = logit_scale.reshape(()) * image @ all_text.T + logit_bias.reshape(())  # [B, N]
    if positives is None:
        signs = -torch.ones_like(logits)
        rows = torch.arange(image.shape[0], device=image.device)
        signs[rows, _local_labels(image.shape[0], image.device)] = 1.0
    else:
        signs = positives.to(logits.dtype) * 2 - 1
    return -F.logsigmoid(signs * logits).sum() / image.shape[0]


def dino_loss(
    student: list[Tensor],
    teacher: list[Tensor],
    center: Tensor,
    teacher_temp: float,
    student_temp: float = 0.1,
) -> Tensor:
    """DINO's self-distillation cross-entropy (Caron et al. 2021). Scalar.

    student[v]: [B, K] student head outputs of crop v (the global crops first, then the
    local ones); teacher[i]: [B, K] teacher head outputs of global crop i (detached here:
    the stop-gradient is part of the method); center: [K] (or [1, K]), the running mean
    of the teacher outputs. Targets are q_i = softmax((teacher[i] - center) / teacher_temp)
    (centred, then sharpened by a low temperature); predictions are
    log softmax(student[v] / student_temp). For every i and every crop v != i the term is
    -sum_k q_i log p_v averaged over B; the result is the mean over all such (i, v) pairs.
    Every term is per sample, so under DDP each rank's mean over its local rows, averaged
    by DDP, is the single-process loss of the global batch (the centre is made equal on
    every rank by the caller).
    """
    _check_positive(teacher_temp, "teacher_temp")
    _check_positive(student_temp, "student_temp")
    if not teacher or len(student) < 2 or len(teacher) > len(student):
        raise ValueError(
            f"need >= 1 teacher view and >= 2 student views with teacher <= student, "
            f"got {len(teacher)} teacher and {len(student)} student views"
        )
    for i, t in enumerate([*student, *teacher]):
        _check_matrix(t, f"student/teacher[{i}]")
        if t.shape != student[0].shape:
            raise ValueError(f"all student and teacher outputs must be {tuple(student[0].shape)}")
    if center.numel() != student[0].shape[1] or center.ndim > 2:
        raise ValueError(
            f"center must be [K] with K = {student[0].shape[1]}, got {tuple(center.shape)}"
        )
    # float32 at least: the teacher logits are divided by ~0.04, which would amplify bf16
    # rounding 25-fold, and bf16 log-probabilities are too coarse for a cross-entropy.
    work = torch.promote_types(student[0].dtype, torch.float32)
    c = center.detach().reshape(1, -1).to(work)
    targets = [F.softmax((t.detach().to(work) - c) / teacher_temp, dim=1) for t in teacher]
    log_p = [F.log_softmax(s.to(work) / student_temp, dim=1) for s in student]
    terms = [
        -(q * lp).sum(dim=1).mean()
        for i, q in enumerate(targets)
        for v, lp in enumerate(log_p)
        if v != i
    ]
    return torch.stack(terms).mean()


# ---------------------------------------------------------------- redundancy reduction
# Barlow Twins, VICReg and SimSiam have no negatives. The first two regularise statistics
# of the whole batch (cross-correlation, variance, covariance), which do not split into
# per-sample terms: under DDP every rank computes the SAME global-batch loss from
# statistics summed (or embeddings gathered) across ranks WITH gradients. Each rank's
# backward then sends every rank d loss / d z_r, the gather/sum backward adds the world
# copies, and DDP's average over ranks divides them out again: the parameter gradient is
# exactly the single-process gradient of the loss on the concatenated batch.


def _at_least_float32(x: Tensor) -> Tensor:
    # Batch statistics of bf16 embeddings lose the small off-diagonal correlations that
    # these losses push to zero; float64 (the tests) stays float64.
    return x.to(torch.promote_types(x.dtype, torch.float32))


def barlow_twins_loss(z1: Tensor, z2: Tensor, lambd: float = 0.0051, eps: float = 1e-5) -> Tensor:
    """Barlow Twins (Zbontar et al. 2021). z1, z2: [B, D] embeddings of two views. Scalar.

    Each embedding dimension is standardised over the GLOBAL batch of N = B * world
    samples (mean and biased variance, as a BatchNorm without affine does; `eps` is added
    to the variance), then C = z1_std^T z2_std / N is their [D, D] cross-correlation and

        loss = sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2.

    Under DDP the sums behind the means, the variances and C are all-reduced with
    gradients, so every rank returns the same global-batch loss. Runs in float32 at least.
    """
    _check_pair(z1, z2, "z1,z2")
    _check_positive(lambd, "lambd")
    _check_positive(eps, "eps")
    n_global = z1.shape[0] * dist.world_size()
    if n_global < 2:
        raise ValueError("Barlow Twins needs a global batch of at least 2 samples")
    z1, z2 = _at_least_float32(z1), _at_least_float32(z2)

    def standardise(z: Tensor) -> Tensor:
        mean = dist.all_reduce_sum_with_grad(z.sum(dim=0)) / n_global  # [D]
        centred = z - mean
        var = dist.all_reduce_sum_with_grad(centred.square().sum(dim=0)) / n_global  # [D]
        return centred / torch.sqrt(var + eps)

    c = dist.all_reduce_sum_with_grad(standardise(z1).T @ standardise(z2)) / n_global  # [D, D]
    diag = torch.diagonal(c)
    on_diag = (1 - diag).square().sum()
    off_diag = c.square().sum() - diag.square().sum()
    return on_diag + lambd * off_diag


def vicreg_terms(
    z1: Tensor, z2: Tensor, gamma: float = 1.0, eps: float = 1e-4
) -> tuple[Tensor, Tensor, Tensor]:
    """VICReg's three terms (Bardes et al. 2022). z1, z2: [B, D] embeddings. Scalars:

    invariance: mean squared error between z1 and z2, over this rank's B x D entries;
    variance: per view, mean over D of relu(gamma - sqrt(Var_N[z_d] + eps)) (unbiased
        variance over the global batch of N samples), averaged over the two views;
    covariance: per view, sum_{i != j} Cov_N[z]_ij^2 / D, summed over the two views.

    The variance term averages the views and the covariance term sums them, as the
    authors' released code does (the weights 25/25/1 were tuned with it). Under DDP the
    variance and covariance use the embeddings of every rank, gathered with gradients
    (the same value on every rank); the invariance term is per sample, so its local mean
    averages over ranks to the global one. Runs in float32 at least.
    """
    _check_pair(z1, z2, "z1,z2")
    _check_positive(gamma, "gamma")
    _check_positive(eps, "eps")
    z1, z2 = _at_least_float32(z1), _at_least_float32(z2)
    if z1.shape[0] * dist.world_size() < 2:
        raise ValueError("VICReg needs a global batch of at least 2 samples")
    invariance = F.mse_loss(z1, z2)
    variance = z1.new_zeros(())
    covariance = z1.new_zeros(())
    for z in (dist.gather_with_grad(z1), dist.gather_with_grad(z2)):  # [N, D] each
        n, d = z.shape
        centred = z - z.mean(dim=0)
        std = torch.sqrt(centred.square().sum(dim=0) / (n - 1) + eps)  # [D]
        variance = variance + F.relu(gamma - std).mean() / 2
        cov = centred.T @ centred / (n - 1)  # [D, D]
        covariance = covariance + (cov.square().sum() - torch.diagonal(cov).square().sum()) / d
    return invariance, variance, covariance


def vicreg_loss(
    z1: Tensor,
    z2: Tensor,
    sim_coeff: float = 25.0,
    std_coeff: float = 25.0,
    cov_coeff: float = 1.0,
    gamma: float = 1.0,
    eps: float = 1e-4,
) -> Tensor:
    """VICReg: sim_coeff * invariance + std_coeff * variance + cov_coeff * covariance
    (the terms of `vicreg_terms`; z1, z2: [B, D]). Scalar; paper weights 25 / 25 / 1."""
    invariance, variance, covariance = vicreg_terms(z1, z2, gamma, eps)
    return sim_coeff * invariance + std_coeff * variance + cov_coeff * covariance


def simsiam_loss(p: Tensor, z: Tensor) -> Tensor:
    """SimSiam's negative cosine (Chen & He 2021): mean over B of -cos(p, z), in [-1, 1].

    p: [B, d] predictions; z: [B, d] projections of the other view, detached here (the
    stop-gradient is what keeps SimSiam from collapsing, so callers cannot forget it).
    Per sample, so under DDP the local mean averages to the global one.
    """
    _check_pair(p, z, "p,z")
    return -(F.normalize(p, dim=1) * F.normalize(z.detach(), dim=1)).sum(dim=1).mean()
