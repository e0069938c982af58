"""Hand-derived tangent-linear maps of torch's built-in recurrent cells.

For ``nn.RNNCell``/``nn.GRUCell``/``nn.LSTMCell`` and unidirectional
``nn.RNN``/``nn.GRU``/``nn.LSTM`` (any number of layers) the one-step map is
two affine maps (``gi = x W_ihᵀ + b_ih``, ``gh = h W_hhᵀ + b_hh``) followed by
an elementwise gate function. Its derivative at a recorded row (z_{t-1}, x_t)
is therefore fixed by a few elementwise *coefficient* vectors per row (the
gate derivatives), and

* A_t d   = gate-combination(coefficients, d W_hhᵀ) (+ direct term),
* A_tᵀ λ  = (coefficients ⊙ λ) W_hh (+ direct term),
* B_t w   = gate-combination(coefficients, x dW_ihᵀ + db_ih, h dW_hhᵀ + db_hh),
* B_tᵀ q  = outer products of (coefficients ⊙ q) with x and h, summed over rows.

:func:`linearize` computes the coefficients once for every (b, t) in one
batched pass (parallel over time, no autograd graph); every product then costs
one matrix multiply per affine map plus a few elementwise operations: no
re-run of the forward, no ``torch.func`` transform overhead.

Layouts. Tangents and cotangents are flat states ``[*rows, S]`` (one vector)
or, with ``cols=True``, ``[*rows, k, S]``: k columns stored *after* the rows,
so that every product with a weight matrix is one GEMM over all rows and
columns (``[rows·k, H] @ [H, G]``; for the parameter side ``[rows, I] @ [I, k·G]``
and ``[k·G, rows] @ [rows, I]``). Parameter tangents are dicts of tensors
``[*shape]`` or, with ``cols=True``, ``[k, *shape]``. Without ``cols`` the maps
also broadcast over extra *leading* dimensions of a state tangent (used to
build the dense Jacobians A_t in one vectorized pass), and they are plain
tensor functions that ``torch.func.vmap`` can batch.

Memory: per row and layer, H (RNN), 5H (GRU) or 6H (LSTM) numbers: 1×, 5× and
3× the trajectory tensor of a one-layer model. User cells have no
linearization here; kpflow falls back to ``torch.func.jvp``/``vjp``.

The equations are those of :mod:`kpflow.cells` (torch's own).
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["CellLinearization", "linearize", "supports"]

Params = Mapping[str, Tensor]


def _add(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    if a is None:
        return b
    if b is None:
        return a
    return a + b


class _Layer:
    """The derivative of one layer of a built-in cell at a batch of rows.

    ``inp`` [*R, In] and ``h`` [*R, H] are the layer's input and state at the
    linearization point; the coefficients are [*R, H] or [*R, 3, H].
    ``names`` are the parameter names (w_ih, w_hh, b_ih, b_hh), a bias name
    None when the module has no bias.
    """

    __slots__ = ("kind", "H", "names", "w_ih", "w_hh", "inp", "h", "coef", "aux1", "aux2", "aux3")

    def __init__(self, kind, H, names, w_ih, w_hh, inp, h, coef, aux1=None, aux2=None, aux3=None):
        self.kind = kind
        self.H = H
        self.names = names
        self.w_ih = w_ih
        self.w_hh = w_hh
        self.inp = inp
        self.h = h
        # RNN: φ' [*R, H]; GRU: [k_r, k_z, k_hn] [*R, 3, H];
        # LSTM: [a_i, a_f, a_g, b_o] [*R, 4, H] (b_o = σ'(o) tanh(c'), also aux2).
        self.coef = coef
        self.aux1 = aux1  # GRU: k_n [*R, H]; LSTM: σ(f)
        self.aux2 = aux2  # GRU: u [*R, H];   LSTM: b_o (a view of coef)
        self.aux3 = aux3  # LSTM: σ(o) (1 - tanh²(c'))

    def at(self, t: int) -> "_Layer":
        """The same layer restricted to step t of rows laid out [B, T, ...]."""

        def sl(x):
            return None if x is None else x[:, t]

        return _Layer(
            self.kind, self.H, self.names, self.w_ih, self.w_hh, sl(self.inp), sl(self.h),
            sl(self.coef), sl(self.aux1), sl(self.aux2), sl(self.aux3),
        )

    # ------------------------------------------------------------ helpers
    @staticmethod
    def _e(c: Tensor | None, cols: bool, vec: bool = False) -> Tensor | None:
        """A coefficient made to broadcast against [*R, k, ...] when ``cols``."""
        if c is None or not cols:
            return c
        return c.unsqueeze(-3 if vec else -2)

    @staticmethod
    def _theta_linear(inp: Tensor, dW: Tensor, cols: bool) -> Tensor:
        """inp dWᵀ at every row; with ``cols``, dW is [k, G, In] and the result [*R, k, G]."""
        if not cols:
            return F.linear(inp, dW)
        k, G, In = dW.shape
        out = inp.reshape(-1, In) @ dW.permute(2, 0, 1).reshape(In, k * G)
        return out.reshape(*inp.shape[:-1], k, G)

    # ----------------------------------------------------------- forward
    def tangent(self, d_inp, d_h, d_c, dtheta, cols: bool = False):
        """(dh', dc') from tangents of the input, h, c and the parameters (None = zero)."""
        w_ih_n, w_hh_n, b_ih_n, b_hh_n = self.names
        dgi = None if d_inp is None else F.linear(d_inp, self.w_ih)
        dgh = None if d_h is None else F.linear(d_h, self.w_hh)
        if dtheta:
            if w_ih_n in dtheta:
                dgi = _add(dgi, self._theta_linear(self.inp, dtheta[w_ih_n], cols))
            if b_ih_n is not None and b_ih_n in dtheta:
                dgi = _add(dgi, dtheta[b_ih_n])
            if w_hh_n in dtheta:
                dgh = _add(dgh, self._theta_linear(self.h, dtheta[w_hh_n], cols))
            if b_hh_n is not None and b_hh_n in dtheta:
                dgh = _add(dgh, dtheta[b_hh_n])
        H = self.H
        if self.kind == "rnn":
            pre = _add(dgi, dgh)
            return (None if pre is None else self._e(self.coef, cols) * pre), None
        if self.kind == "gru":
            coef = self._e(self.coef, cols, vec=True)
            out = None
            if dgh is not None or dgi is not None:
                if dgh is not None:
                    acc = dgh.unflatten(-1, (3, H)) * coef  # a fresh tensor of full shape
                    if dgi is not None:
                        gi3 = dgi.unflatten(-1, (3, H))
                        acc[..., :2, :].addcmul_(gi3[..., :2, :], coef[..., :2, :])
                else:
                    gi3 = dgi.unflatten(-1, (3, H))
                    acc = gi3[..., :2, :] * coef[..., :2, :]
                out = acc.sum(-2)
                if dgi is not None:
                    out.addcmul_(gi3[..., 2, :], self._e(self.aux1, cols))
            if d_h is not None:
                u = self._e(self.aux2, cols)
                out = u * d_h if out is None else out.addcmul_(u, d_h)
            return out, None
        # lstm
        pre = _add(dgi, dgh)
        dc = None
        if pre is not None:
            dc = (pre[..., : 3 * H].unflatten(-1, (3, H)) * self._e(self.coef[..., :3, :], cols, vec=True)).sum(-2)
        if d_c is not None:
            sf = self._e(self.aux1, cols)
            dc = sf * d_c if dc is None else dc.addcmul_(sf, d_c)
        dh = None if dc is None else self._e(self.aux3, cols) * dc
        if pre is not None:
            b_o = self._e(self.aux2, cols)
            dh = b_o * pre[..., 3 * H :] if dh is None else dh.addcmul_(b_o, pre[..., 3 * H :])
        return dh, dc

    # ------------------------------------------------- parameter kernels
    @staticmethod
    def _affine(x: Tensor, dW: Tensor | None, bias: Tensor | None, cols: bool, G: int) -> Tensor | None:
        """x dWᵀ + bias at every row as a fresh tensor [*R, G] ([*R, k, G] with cols); None if both absent."""
        R = x.shape[:-1]
        In = x.shape[-1]
        if dW is None:
            if bias is None:
                return None
            return bias.new_empty((*R, *bias.shape)).copy_(bias)
        x2 = x.reshape(-1, In)
        if cols:
            k = dW.shape[0]
            W2 = dW.permute(2, 0, 1).reshape(In, k * G)
            out = x2 @ W2 if bias is None else torch.addmm(bias.reshape(1, k * G), x2, W2)
            return out.reshape(*R, k, G)
        out = x2 @ dW.T if bias is None else torch.addmm(bias, x2, dW.T)
        return out.reshape(*R, G)

    def theta_tangent(self, dtheta, cols: bool = False):
        """(dh', dc') for a parameter tangent alone (input and state tangents zero)."""
        w_ih_n, w_hh_n, b_ih_n, b_hh_n = self.names
        H = self.H
        dWi, dWh = dtheta.get(w_ih_n), dtheta.get(w_hh_n)
        dbi = None if b_ih_n is None else dtheta.get(b_ih_n)
        dbh = None if b_hh_n is None else dtheta.get(b_hh_n)
        if self.kind == "gru":
            gi = self._affine(self.inp, dWi, dbi, cols, 3 * H)
            gh = self._affine(self.h, dWh, dbh, cols, 3 * H)
            if gi is None and gh is None:
                return None, None
            coef = self._e(self.coef, cols, vec=True)
            if gi is None:
                g3 = gh.unflatten(-1, (3, H)).mul_(coef)
                out = torch.add(g3[..., 0, :], g3[..., 1, :]).add_(g3[..., 2, :])
                return out, None
            gi[..., : 2 * H] += gh[..., : 2 * H] if gh is not None else 0
            g3 = gi.unflatten(-1, (3, H))
            g3[..., :2, :].mul_(coef[..., :2, :])
            g3[..., 2, :].mul_(self._e(self.aux1, cols))
            if gh is not None:
                g3[..., 2, :].addcmul_(gh[..., 2 * H :], coef[..., 2, :])
            out = torch.add(g3[..., 0, :], g3[..., 1, :]).add_(g3[..., 2, :])
            return out, None
        G = self.w_hh.shape[0]
        pre = self._affine(self.inp, dWi, _add(dbi, dbh), cols, G)
        if dWh is not None:
            if pre is None:
                pre = self._affine(self.h, dWh, None, cols, G)
            else:
                In = self.h.shape[-1]
                h2 = self.h.reshape(-1, In)
                W2 = dWh.permute(2, 0, 1).reshape(In, -1) if cols else dWh.T
                pre.view(h2.shape[0], -1).addmm_(h2, W2)
        if pre is None:
            return None, None
        if self.kind == "rnn":
            return pre.mul_(self._e(self.coef, cols)), None
        p4 = pre.unflatten(-1, (4, H)).mul_(self._e(self.coef, cols, vec=True))
        dc = torch.add(p4[..., 0, :], p4[..., 1, :]).add_(p4[..., 2, :])
        dh = torch.addcmul(p4[..., 3, :], self._e(self.aux3, cols), dc)
        return dh, dc

    # ------------------------------------------- one-layer state kernels
    # A d and Aᵀ λ of a one-layer cell with the fewest tensor operations:
    # these run once per step inside the scans of P and P*.
    def state_tangent(self, d: Tensor, cols: bool = False) -> Tensor:
        H = self.H
        if self.kind == "rnn":
            return F.linear(d, self.w_hh).mul_(self._e(self.coef, cols))
        # (Small reductions over the gate axis are slow as .sum(-2); add the
        # gate slices instead.)
        if self.kind == "gru":
            g3 = F.linear(d, self.w_hh).unflatten(-1, (3, H)).mul_(self._e(self.coef, cols, vec=True))
            out = torch.add(g3[..., 0, :], g3[..., 1, :]).add_(g3[..., 2, :])
            return out.addcmul_(self._e(self.aux2, cols), d)
        p4 = F.linear(d[..., :H], self.w_hh).unflatten(-1, (4, H)).mul_(self._e(self.coef, cols, vec=True))
        dc = torch.add(p4[..., 0, :], p4[..., 1, :]).add_(p4[..., 2, :]).addcmul_(self._e(self.aux1, cols), d[..., H:])
        dh = torch.addcmul(p4[..., 3, :], self._e(self.aux3, cols), dc)
        return torch.cat([dh, dc], dim=-1)

    def state_cotangent(self, lam: Tensor, cols: bool = False) -> Tensor:
        H = self.H
        if self.kind == "rnn":
            return (self._e(self.coef, cols) * lam) @ self.w_hh
        if self.kind == "gru":
            g = (self._e(self.coef, cols, vec=True) * lam.unsqueeze(-2)).flatten(-2)
            return (g @ self.w_hh).addcmul_(self._e(self.aux2, cols), lam)
        lh, lc = lam[..., :H], lam[..., H:]
        lct = torch.addcmul(lc, self._e(self.aux3, cols), lh)
        g = torch.stack([lct, lct, lct, lh], dim=-2).mul_(self._e(self.coef, cols, vec=True)).flatten(-2)
        return torch.cat([g @ self.w_hh, self._e(self.aux1, cols) * lct], dim=-1)

    # ---------------------------------------------------------- backward
    def cotangent(self, lh, lc, state: bool, inp: bool, wanted, grads: dict, cols: bool = False):
        """Cotangents of (h, c) and of the input from those of (h', c'); parameter ones into ``grads``.

        Returns (λ_h or None, λ_c or None, λ_inp or None).
        """
        H = self.H
        w_ih_n, w_hh_n, b_ih_n, b_hh_n = self.names
        lh_dir = lc_dir = None
        if self.kind == "rnn":
            gh = self._e(self.coef, cols) * lh
            gi = gh
        elif self.kind == "gru":
            gh = (self._e(self.coef, cols, vec=True) * lh.unsqueeze(-2)).flatten(-2)
            lh_dir = self._e(self.aux2, cols)
            need_gi = inp or (wanted and (w_ih_n in wanted or (b_ih_n is not None and b_ih_n in wanted)))
            gi = None
            if inp or (need_gi and cols):
                gi = torch.cat([gh[..., : 2 * H], self._e(self.aux1, cols) * lh], dim=-1)
            elif need_gi:
                gi = (gh[..., : 2 * H], self.aux1 * lh)
        else:
            lct = self._e(self.aux3, cols) * lh
            if lc is not None:
                lct = lct + lc
            gh = torch.stack([lct, lct, lct, lh], dim=-2).mul_(self._e(self.coef, cols, vec=True)).flatten(-2)
            gi = gh
            lc_dir = self._e(self.aux1, cols) * lct
        out_h = None
        if state:
            out_h = gh @ self.w_hh
            if lh_dir is not None:
                out_h.addcmul_(lh_dir, lh)
        out_inp = gi @ self.w_ih if inp else None
        if wanted:
            self._grads(gi, gh, wanted, grads, cols)
        return out_h, lc_dir, out_inp

    def _grads(self, gi, gh, wanted, out: dict, cols: bool) -> None:
        """Σ_rows of the parameter cotangents, for the names in ``wanted``."""
        w_ih_n, w_hh_n, b_ih_n, b_hh_n = self.names
        for g, x, w_n, b_n in ((gi, self.inp, w_ih_n, b_ih_n), (gh, self.h, w_hh_n, b_hh_n)):
            want_w = w_n in wanted
            want_b = b_n is not None and b_n in wanted
            if not (want_w or want_b):
                continue
            # xᵀ g rather than gᵀ x: much faster when x is thin (the inputs).
            x2 = x.reshape(-1, x.shape[-1])
            if isinstance(g, tuple):  # GRU input side, in pieces [r z | n] (no concatenation)
                ws, bs = [], []
                for piece in g:
                    p2 = piece.reshape(-1, piece.shape[-1])
                    if want_w:
                        ws.append((x2.T @ p2).T)
                    if want_b:
                        bs.append(p2.sum(0))
                if want_w:
                    out[w_n] = torch.cat(ws, dim=0)
                if want_b:
                    out[b_n] = torch.cat(bs, dim=0)
            elif cols:
                k, G = g.shape[-2:]
                g2 = g.reshape(-1, k * G)
                if want_w:
                    out[w_n] = (x2.T @ g2).reshape(-1, k, G).permute(1, 2, 0)
                if want_b:
                    out[b_n] = g2.sum(0).reshape(k, G)
            else:
                g2 = g.reshape(-1, g.shape[-1])
                if want_w:
                    out[w_n] = (x2.T @ g2).T
                if want_b:
                    out[b_n] = g2.sum(0)


class CellLinearization:
    """Tangent-linear maps of a built-in cell's one-step map at every recorded row.

    Built by :func:`linearize`. Rows are the leading dimensions of the
    linearization point ([B, T] for a trajectory); :meth:`steps` gives the
    restriction to each step.
    """

    def __init__(self, layers: list[_Layer], is_lstm: bool, H: int) -> None:
        self.layers = layers
        self.is_lstm = is_lstm
        self.H = H
        self.L = len(layers)
        self._steps: list[CellLinearization] | None = None

    def at(self, t: int) -> "CellLinearization":
        return CellLinearization([lay.at(t) for lay in self.layers], self.is_lstm, self.H)

    def steps(self, T: int) -> list["CellLinearization"]:
        """The per-step restrictions ``at(0..T-1)``, built once."""
        if self._steps is None:
            self._steps = [self.at(t) for t in range(T)]
        return self._steps

    def _h(self, z: Tensor, k: int) -> Tensor:
        return z[..., k * self.H : (k + 1) * self.H]

    def _c(self, z: Tensor, k: int) -> Tensor:
        return z[..., (self.L + k) * self.H : (self.L + k + 1) * self.H]

    def _join(self, hs: list, cs: list) -> Tensor:
        parts = hs + cs if self.is_lstm else hs
        if len(parts) == 1:
            return parts[0]
        ref = next(p for p in parts if p is not None)
        return torch.cat([torch.zeros_like(ref) if p is None else p for p in parts], dim=-1)

    # ----------------------------------------------------------- forward
    def tangent(self, d: Tensor | None, dtheta: Mapping[str, Tensor] | None, cols: bool = False) -> Tensor | None:
        """A d + B dθ at every row (None when both are zero)."""
        d_inp = None
        hs, cs = [], []
        for k, lay in enumerate(self.layers):
            dh_k = None if d is None else self._h(d, k)
            dc_k = None if (d is None or not self.is_lstm) else self._c(d, k)
            if d is None and d_inp is None and dtheta:
                dh, dc = lay.theta_tangent(dtheta, cols)
            else:
                dh, dc = lay.tangent(d_inp, dh_k, dc_k, dtheta, cols)
            hs.append(dh)
            cs.append(dc)
            d_inp = dh
        if all(p is None for p in hs + cs):
            return None
        return self._join(hs, cs)

    def state_tangent(self, d: Tensor, cols: bool = False) -> Tensor:
        """A d."""
        if self.L == 1:
            return self.layers[0].state_tangent(d, cols)
        return self.tangent(d, None, cols)

    # ---------------------------------------------------------- backward
    def cotangent(self, lam: Tensor, state: bool = True, wanted=None, cols: bool = False):
        """(Aᵀ λ if ``state`` else None, {name: Σ_rows Bᵀ λ} for the names in ``wanted``)."""
        L = self.L
        l_above = None  # cotangent of layer k's output arriving through layer k+1's input
        hbar: list = [None] * L
        cbar: list = [None] * L
        grads: dict = {}
        for k in range(L - 1, -1, -1):
            lay = self.layers[k]
            lh = _add(self._h(lam, k), l_above)
            lc = self._c(lam, k) if self.is_lstm else None
            hbar[k], cbar[k], l_above = lay.cotangent(lh, lc, state, k > 0, wanted, grads, cols)
        out = self._join(hbar, cbar) if state else None
        return out, grads

    def state_cotangent(self, lam: Tensor, cols: bool = False) -> Tensor:
        """Aᵀ λ."""
        if self.L == 1:
            return self.layers[0].state_cotangent(lam, cols)
        return self.cotangent(lam, True, None, cols)[0]

    def param_cotangent(self, lam: Tensor, wanted, cols: bool = False) -> dict:
        """{name: Σ_rows B_rᵀ λ_r} for the parameter names in ``wanted``."""
        return self.cotangent(lam, False, wanted, cols)[1]

    # ------------------------------------------------------------- dense
    def dense_state_jacobians(self, rows: tuple[int, int], S: int, chunk_elements: int = 2**23) -> Tensor:
        """A at every row as a dense tensor, stored *time-major* [T, B, S, S] for rows (B, T).

        A[t, b, i, j] = ∂f_i/∂z_j at (b, t); ``result.transpose(0, 1)`` is the
        [B, T, S, S] view. Time-major storage makes A_t of one step a
        contiguous [B, S, S] block for the scans.

        One vectorized pass. One-layer cells use the closed forms
        (A = Σ_gates diag(c_g) W_g + diagonal terms, written by a few
        broadcasting ``addcmul`` passes); deeper models push the identity
        columns through the tangent map by broadcasting (e_j W_hhᵀ computed
        once per column, not once per row), in chunks of columns bounding
        temporary memory.
        """
        Bn, Tn = rows
        lay = self.layers[0]
        H = self.H
        if self.L == 1:
            W = lay.w_hh

            def tm(x):  # [B, T, ...] -> [T, B, ..., 1]: a row scale
                return x.transpose(0, 1).unsqueeze(-1)

            if lay.kind == "rnn":
                return tm(lay.coef) * W
            if lay.kind == "gru":
                W3 = W.view(3, H, H)
                C = lay.coef.transpose(0, 1).unsqueeze(-1)  # [T, B, 3, H, 1]
                out = C[..., 0, :, :] * W3[0]
                out.addcmul_(C[..., 1, :, :], W3[1]).addcmul_(C[..., 2, :, :], W3[2])
                out.diagonal(dim1=-2, dim2=-1).add_(lay.aux2.transpose(0, 1))
                return out
            # LSTM, state [h, c]
            W4 = W.view(4, H, H)
            C = lay.coef.transpose(0, 1).unsqueeze(-1)  # [T, B, 4, H, 1]: a_i, a_f, a_g, b_o
            out = W.new_zeros(Tn, Bn, 2 * H, 2 * H)
            dcdh = out[..., H:, :H]
            for g in range(3):
                dcdh.addcmul_(C[..., g, :, :], W4[g])
            dhdh = out[..., :H, :H]
            dhdh.addcmul_(C[..., 3, :, :], W4[3]).addcmul_(tm(lay.aux3), dcdh)
            sf, aux3 = lay.aux1.transpose(0, 1), lay.aux3.transpose(0, 1)
            out[..., H:, H:].diagonal(dim1=-2, dim2=-1).copy_(sf)
            out[..., :H, H:].diagonal(dim1=-2, dim2=-1).copy_(aux3 * sf)
            return out
        ref = lay.w_hh
        R = Bn * Tn
        out = torch.empty(Tn, Bn, S, S, dtype=ref.dtype, device=ref.device)
        eye = torch.eye(S, dtype=ref.dtype, device=ref.device)
        width = max(1, min(S, chunk_elements // max(1, R * 4 * H * self.L)))
        for j0 in range(0, S, width):
            j1 = min(S, j0 + width)
            cols = self.tangent(eye[j0:j1].reshape(j1 - j0, 1, 1, S), None)  # [c, B, T, S]
            out[..., j0:j1] = cols.permute(2, 1, 3, 0)
        return out


def _kind(model) -> tuple[str, int, int, str]:
    """(cell kind, layers, hidden size, parameter-name suffix pattern)."""
    if isinstance(model, nn.LSTMCell):
        return "lstm", 1, model.hidden_size, ""
    if isinstance(model, nn.GRUCell):
        return "gru", 1, model.hidden_size, ""
    if isinstance(model, nn.RNNCell):
        return "rnn_" + model.nonlinearity, 1, model.hidden_size, ""
    if isinstance(model, (nn.RNN, nn.GRU, nn.LSTM)):
        mode = {"RNN_TANH": "rnn_tanh", "RNN_RELU": "rnn_relu", "GRU": "gru", "LSTM": "lstm"}[model.mode]
        return mode, model.num_layers, model.hidden_size, "_l{k}"
    raise TypeError(f"model: no hand-derived linearization for {type(model).__name__}")


def supports(model) -> bool:
    """Whether :func:`linearize` has hand-derived maps for this model.

    The same models :func:`kpflow.cells.make_step_map` replaces by its plain-op
    equations (torch's cells and unidirectional modules, subclasses included).
    """
    if isinstance(model, (nn.RNNCell, nn.GRUCell, nn.LSTMCell)):
        return True
    if isinstance(model, (nn.RNN, nn.GRU, nn.LSTM)):
        return not model.bidirectional and not getattr(model, "proj_size", 0)
    return False


@torch.no_grad()
def linearize(model, params: Params, x: Tensor, z: Tensor) -> CellLinearization:
    """The tangent-linear maps of a built-in cell at rows ``x`` [*R, I], ``z`` [*R, S].

    Parameters
    ----------
    model : nn.Module
        The torch RNN cell or module (only its kind and sizes are read).
    params : dict
        All its parameters by name (θ and the fixed ones).
    x, z : Tensor
        Inputs and flat states of the rows (e.g. [B, T, I] and the
        trajectory's previous states [B, T, S]).
    """
    kind, L, H, pattern = _kind(model)
    is_lstm = kind == "lstm"
    layers = []
    inp = x
    for k in range(L):
        sfx = pattern.format(k=k)
        names = tuple(
            n if n in params else None
            for n in ("weight_ih" + sfx, "weight_hh" + sfx, "bias_ih" + sfx, "bias_hh" + sfx)
        )
        w_ih, w_hh = params[names[0]], params[names[1]]
        b_ih = None if names[2] is None else params[names[2]]
        b_hh = None if names[3] is None else params[names[3]]
        h = z[..., k * H : (k + 1) * H]
        gi = F.linear(inp, w_ih, b_ih)
        gh = F.linear(h, w_hh, b_hh)
        if kind.startswith("rnn"):
            pre = gi + gh
            if kind == "rnn_tanh":
                h2 = torch.tanh(pre)
                coef = 1 - h2 * h2
            else:
                h2 = torch.relu(pre)
                coef = (pre > 0).to(pre.dtype)
            lay = _Layer("rnn", H, names, w_ih, w_hh, inp, h, coef)
        elif kind == "gru":
            i_r, i_z, i_n = gi.chunk(3, dim=-1)
            h_r, h_z, h_n = gh.chunk(3, dim=-1)
            r = torch.sigmoid(i_r + h_r)
            u = torch.sigmoid(i_z + h_z)
            n = torch.tanh(i_n + r * h_n)
            h2 = (1 - u) * n + u * h
            k_n = (1 - n * n) * (1 - u)
            coef = torch.stack([r * (1 - r) * h_n * k_n, u * (1 - u) * (h - n), k_n * r], dim=-2)
            lay = _Layer("gru", H, names, w_ih, w_hh, inp, h, coef, k_n, u)
        else:
            c = z[..., (L + k) * H : (L + k + 1) * H]
            i, f, g, o = (gi + gh).chunk(4, dim=-1)
            si, sf, tg, so = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
            c2 = sf * c + si * tg
            tc = torch.tanh(c2)
            h2 = so * tc
            coef = torch.stack([si * (1 - si) * tg, sf * (1 - sf) * c, si * (1 - tg * tg), so * (1 - so) * tc], dim=-2)
            lay = _Layer("lstm", H, names, w_ih, w_hh, inp, h, coef, sf, coef[..., 3, :], so * (1 - tc * tc))
        layers.append(lay)
        inp = h2
    return CellLinearization(layers, is_lstm, H)
