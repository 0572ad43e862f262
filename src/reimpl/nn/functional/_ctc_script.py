"""The pieces of the CTC loss that TorchScript compiles too, and the scripted loss itself.

Both forms of :func:`reimpl.nn.functional.ctc_loss` -- the eager one (a custom autograd
Function, :mod:`._ctc`) and the one ``torch.jit.script`` compiles for ``CTCLoss`` -- check
their arguments and lay out the label sequence here, so the two can never disagree on what
they accept. Written in TorchScript's subset: PEP 585 generics (``list[int]``), no PEP 604
unions, builtin exceptions only (under TorchScript they surface as ``torch.jit.Error``).

Notation (Graves et al. 2006, sec. 4.1): ``l`` a target of length ``|l|``; ``l'`` the
*extended* label sequence of length ``2|l| + 1``, ``l`` with a blank before, between and
after its labels; ``alpha_t(s)`` / ``beta_t(s)`` the forward / backward variables, kept as
logarithms. Position ``s`` of ``l'`` may be reached from ``s``, ``s - 1`` and -- when
``l'_s`` is a label unlike ``l'_{s-2}`` -- from ``s - 2`` (skipping a blank between two
different labels; two equal labels in a row need the blank between them).
"""

import math

import torch
from torch import Tensor

# --------------------------------------------------------------------------- checks


def check_lengths_dtype(lengths: Tensor, name: str) -> None:
    """Tensor lengths must be integers (bool is not a length)."""
    if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
        raise RuntimeError(
            "ctc_loss: " + name + " must hold integers, got a tensor of " + str(lengths.dtype)
        )


def batched_log_probs(log_probs: Tensor) -> Tensor:
    """``(T, N, C)`` as given, or ``(T, C)`` as one sample ``(T, 1, C)``; float32/64 only."""
    lp3 = log_probs if log_probs.dim() == 3 else log_probs.unsqueeze(1)
    if log_probs.dtype != torch.float32 and log_probs.dtype != torch.float64:
        # torch's CTC kernels (CPU and CUDA) exist for these two only; autocast casts to
        # float32 before we get here
        raise NotImplementedError(
            "ctc_loss computes in float32 or float64; got log_probs of "
            + str(log_probs.dtype)
            + " (convert with .float())"
        )
    if lp3.numel() == 0:
        raise RuntimeError(
            "ctc_loss: log_probs is empty (shape "
            + str(list(log_probs.shape))
            + "); it needs at least one time step, sample and class"
        )
    if lp3.dim() != 3:
        raise RuntimeError(
            "ctc_loss: log_probs must be (T, N, C) or unbatched (T, C), got a "
            + str(log_probs.dim())
            + "-D tensor"
        )
    return lp3


def check_arguments(lp3: Tensor, targets: Tensor, il: list[int], tl: list[int], blank: int) -> int:
    """torch's refusals (RuntimeError) for shapes, lengths and blank; returns max(tl)."""
    n = lp3.size(1)
    if targets.dim() < 1 or targets.dim() > 2:
        raise RuntimeError(
            "ctc_loss: targets must be padded (N, S) or concatenated 1-D, got a "
            + str(targets.dim())
            + "-D tensor"
        )
    if blank < 0 or blank >= lp3.size(2):
        raise RuntimeError(
            "ctc_loss: blank="
            + str(blank)
            + " is not a class of log_probs (classes 0.."
            + str(lp3.size(2) - 1)
            + ")"
        )
    if len(il) != n or len(tl) != n:
        raise RuntimeError(
            "ctc_loss: input_lengths and target_lengths need one entry per sample ("
            + str(n)
            + "), got "
            + str(len(il))
            + " and "
            + str(len(tl))
        )
    s_max = 0
    for length in tl:
        if length < 0:
            raise RuntimeError("ctc_loss: target_lengths must be >= 0, got " + str(length))
        s_max = max(s_max, length)
    if targets.dim() == 1:
        total = sum(tl)
        if targets.size(0) != total:
            raise RuntimeError(
                "ctc_loss: concatenated targets must hold sum(target_lengths) = "
                + str(total)
                + " labels, got "
                + str(targets.size(0))
            )
    else:
        if targets.size(0) != n:
            raise RuntimeError(
                "ctc_loss: padded targets must have one row per sample ("
                + str(n)
                + "), got "
                + str(targets.size(0))
            )
        if targets.size(1) < s_max:
            raise RuntimeError(
                "ctc_loss: padded targets have "
                + str(targets.size(1))
                + " columns, fewer than the longest target length "
                + str(s_max)
            )
    t = lp3.size(0)
    for length in il:
        if length < 0 or length > t:
            raise RuntimeError(
                "ctc_loss: input_lengths must be in [0, "
                + str(t)
                + "] (the time steps of log_probs), got "
                + str(length)
            )
    return s_max


def check_label_range(labels: Tensor, n_classes: int) -> None:
    """Labels inside the target lengths must be classes of log_probs (torch does not check,
    and reads outside log_probs; we refuse). Padding beyond a length is never read."""
    if labels.numel() == 0:
        return
    bad = (labels < 0) | (labels >= n_classes)
    if bool(bad.any()):
        raise IndexError(
            "ctc_loss: target label "
            + str(int(labels[bad][0]))
            + " is out of range: labels must be classes of log_probs, in [0, "
            + str(n_classes - 1)
            + "]"
        )


# --------------------------------------------------------------------------- label layout


def target_labels(
    targets: Tensor, tl: list[int], s_max: int, blank: int, device: torch.device
) -> tuple[Tensor, Tensor]:
    """``(N, s_max)`` labels of each sample (blank past its length) and the mask of the
    positions inside the lengths, from padded or concatenated targets."""
    n = len(tl)
    lengths = torch.tensor(tl, dtype=torch.long, device=device)
    j = torch.arange(s_max, device=device)
    inside = j.unsqueeze(0) < lengths.unsqueeze(1)
    targets = targets.to(device=device, dtype=torch.long)
    if s_max == 0:
        return torch.full((n, 0), blank, dtype=torch.long, device=device), inside
    if targets.dim() == 2:
        picked = targets[:, :s_max]
    else:  # concatenated: sample n's labels start after the lengths before it
        starts = torch.cumsum(lengths, 0) - lengths
        index = (starts.unsqueeze(1) + j.unsqueeze(0)).clamp(max=max(targets.size(0) - 1, 0))
        picked = targets[index]
    return torch.where(inside, picked, blank), inside


def extended_labels(labels: Tensor, blank: int) -> tuple[Tensor, Tensor, Tensor]:
    """``l'`` (N, 2S+1) and the two skip masks: ``from_back[s]`` -- alpha may come from
    ``s - 2`` -- and ``to_front[s]`` -- beta may come from ``s + 2``."""
    n, s = labels.size(0), labels.size(1)
    ext = torch.full((n, 2 * s + 1), blank, dtype=torch.long, device=labels.device)
    ext[:, 1::2] = labels
    differs = ext[:, 2:] != ext[:, :-2]  # l'_s != l'_{s-2}, for s = 2 .. 2S
    from_back = torch.zeros((n, 2 * s + 1), dtype=torch.bool, device=labels.device)
    to_front = torch.zeros_like(from_back)
    from_back[:, 2:] = differs
    to_front[:, : 2 * s - 1] = differs
    return ext, from_back, to_front


def windows(mask: Tensor, at: int) -> Tensor:
    """(3, N, L) mask of the three predecessors of each position (see :func:`shifted3`);
    ``mask`` gates the one at index ``at`` (the ``s - 2`` / ``s + 2`` term), the other two
    always count."""
    yes = torch.ones_like(mask)
    parts = [yes, yes, yes]
    parts[at] = mask
    return torch.stack(parts)


def shifted3(padded: Tensor) -> Tensor:
    """(3, N, L) view of a padded (N, L + 2) row: ``[k, n, s] = padded[n, s + k]``, so a
    reduction over the three runs along the outer dim (fast), without a copy."""
    n, width = padded.size(0), padded.size(1)
    row, col = padded.stride(0), padded.stride(1)
    return padded.as_strided((3, n, width - 2), (col, row, col), padded.storage_offset())


def log_sum_exp3(x: Tensor) -> Tensor:
    """log(exp(x_0) + exp(x_1) + exp(x_2)) over dim 0, shifted by the max as torch's kernel
    does (a max of -inf shifts by 0, so three -inf give -inf, not nan). Safe for autograd:
    an empty sum takes its log from a stand-in 1, so no 0 * inf reaches the gradient of
    the positions the recursion cannot reach."""
    m = x.detach().amax(0).nan_to_num(nan=0.0, posinf=math.inf, neginf=0.0)
    total = (x - m).exp().sum(0)
    empty = total == 0
    return torch.where(empty, -math.inf, torch.where(empty, 1.0, total).log()) + m


def reduce(nll: Tensor, tl: Tensor, reduction: str, zero_infinity: bool, batched: bool) -> Tensor:
    """zero_infinity, then 'mean' (each loss over its target length ``tl``, at least 1,
    then the batch mean), 'sum' or 'none'. Tensor ops only: under ``vmap`` the lengths
    may be batched."""
    if zero_infinity:
        nll = torch.where(nll == math.inf, torch.zeros_like(nll), nll)
    if reduction == "mean":
        per = tl.reshape(-1).to(device=nll.device, dtype=nll.dtype).clamp_min(1)
        return (nll / per).mean()
    if reduction == "sum":
        return nll.sum()
    return nll if batched else nll.squeeze(0)


# --------------------------------------------------------------------------- TorchScript


def ctc_loss(
    log_probs: Tensor,
    targets: Tensor,
    input_lengths: Tensor,
    target_lengths: Tensor,
    blank: int,
    reduction: str,
    zero_infinity: bool,
) -> Tensor:
    """The scripted form: the alpha recursion with autograd's own gradient, which is the
    derivative of the loss (-posterior) plus the softmax term torch's gradient carries
    (``exp(log_probs)`` where t < input length), added as a term of value zero."""
    if reduction != "none" and reduction != "mean" and reduction != "sum":
        raise ValueError(reduction + " is not a valid value for reduction")
    check_lengths_dtype(input_lengths, "input_lengths")
    check_lengths_dtype(target_lengths, "target_lengths")
    lp3 = batched_log_probs(log_probs)
    il: list[int] = input_lengths.reshape(-1).tolist()
    tl: list[int] = target_lengths.reshape(-1).tolist()
    s_max = check_arguments(lp3, targets, il, tl, blank)
    labels, inside = target_labels(targets, tl, s_max, blank, lp3.device)
    check_label_range(labels[inside], lp3.size(2))
    ext, from_back, _ = extended_labels(labels, blank)
    n, n_ext = ext.size(0), ext.size(1)
    lpe = lp3.gather(2, ext.unsqueeze(0).expand(lp3.size(0), n, n_ext))
    gate = windows(from_back, 0)
    pad = torch.full((n, 2), -math.inf, dtype=lp3.dtype, device=lp3.device)
    s = torch.arange(n_ext, device=lp3.device)
    alpha = torch.where(s < 2, lpe[0], -math.inf)
    steps = [alpha]
    for t in range(1, max(il) if len(il) > 0 else 0):
        prev = shifted3(torch.cat([pad, alpha], 1))
        alpha = log_sum_exp3(torch.where(gate, prev, -math.inf)) + lpe[t]
        steps.append(alpha)
    il_t = torch.tensor(il, dtype=torch.long, device=lp3.device)
    tl_t = torch.tensor(tl, dtype=torch.long, device=lp3.device)
    last = torch.stack(steps)[(il_t - 1).clamp_min(0), torch.arange(n, device=lp3.device)]
    last = torch.cat([pad, last], 1)
    end = last.gather(1, torch.stack([2 * tl_t + 1, 2 * tl_t + 2], 1))
    ll = log_sum_exp3(torch.cat([end, pad[:, :1]], 1).t())
    nll = -torch.where(tl_t == 0, end[:, 1], ll)
    empty = torch.where(tl_t == 0, torch.zeros_like(nll), torch.full_like(nll, -math.inf))
    nll = torch.where(il_t == 0, -empty, nll)
    # torch's gradient carries exp(log_probs) (the softmax term of Graves's eq. 16)
    live = torch.arange(lp3.size(0), device=lp3.device).unsqueeze(1) < il_t.unsqueeze(0)
    soft = torch.where(live.unsqueeze(2), lp3.exp(), torch.zeros_like(lp3)).sum([0, 2])
    nll = nll + (soft - soft.detach())
    return reduce(nll, tl_t, reduction, zero_infinity, log_probs.dim() == 3)
