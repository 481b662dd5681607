"""Recurrent layers (``nn.LSTM``, ``nn.GRU``, ``nn.RNN``): hidden units and input channels.

Every layer and direction has the same hidden size, so hidden unit ``j`` is one unit across
them: it owns row ``g * H + j`` of every gate ``g`` of each input and recurrent weight and bias,
column ``j`` of each recurrent weight, and its positions in the output (forward then backward)
and in the next layer's input columns. With all of those at
zero and a zero initial state the unit stays zero at every step (LSTM: ``c = c / 2``, ``h = 0``;
GRU: ``n = 0``, ``h = h / 2``; tanh/ReLU RNN: ``h = 0``), so masked and shrunk models agree.
Projections (``proj_size``) and packed sequences keep their channels.
"""

from __future__ import annotations

import torch
from torch import nn

from ..graph import Call
from ..propagate import Example, Rule, State, register, tensors_of
from ._examples import randn
from .linear import bind, consume

#: gates per op: rows of the input and recurrent weights are ``[gates * H]``
GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}


class _Around(nn.Module):
    """Linear -> recurrent layer -> Linear on its outputs (examples)."""

    def __init__(self, rnn: nn.Module) -> None:
        super().__init__()
        self.inp, self.rnn = nn.Linear(8, 16), rnn
        width = rnn.proj_size or rnn.hidden_size
        self.out = nn.Linear(width * (2 if rnn.bidirectional else 1), 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.rnn(self.inp(x))[0])


class Recurrent(Rule):
    ops = tuple(GATES)
    examples = (
        Example(lambda: _Around(nn.LSTM(16, 12, num_layers=2, batch_first=True)), randn(2, 5, 8)),
        Example(lambda: _Around(nn.GRU(16, 12, bidirectional=True)), randn(5, 2, 8)),
        Example(lambda: _Around(nn.RNN(16, 12, batch_first=True)), randn(2, 5, 8)),
        Example(
            lambda: _Around(nn.LSTM(16, 12, batch_first=True, proj_size=6)),
            randn(2, 5, 8),
            shrinks=False,
        ),
    )

    def apply(self, call: Call, st: State) -> None:
        # (input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first)
        x, hx, params = call.args[:3]
        if not isinstance(x, torch.Tensor) or len(call.args) != 9:
            st.refuse(call, "a packed sequence")
            return
        biases, layers, bidirectional = call.args[3], call.args[4], call.args[7]
        dirs = 2 if bidirectional else 1
        per = 4 if biases else 2
        if len(params) != layers * dirs * per or params[1].shape[0] != params[1].shape[1] * (
            gates := GATES[call.name]
        ):
            st.refuse(call, "a recurrent layer with projections")
            return
        hidden = params[1].shape[1]
        # one hidden size for every layer and direction: unit j of each is one unit
        u = st.fresh(hidden)
        rows = u.repeat(gates)  # [gates * H]: gate-major, as the weights hold them
        for i in range(layers * dirs):
            w_ih, w_hh, *b = params[i * per : (i + 1) * per]
            for p in (w_ih, w_hh, *b):
                bind(st, p, 0, rows)
            bind(st, w_hh, 1, u)
            if i < dirs:
                consume(st, call, st.small(x), st.wdim(w_ih, 1), -1)
            else:
                bind(st, w_ih, 1, u.repeat(dirs))
        for h in tensors_of(hx):  # [layers * dirs, (B,) H]
            if st.small(h) is not None:
                st.join(st.atoms(h), u)
        out, *rest = tensors_of(call.out)
        st.set(out, u.repeat(dirs))  # [..., dirs * H]: forward then backward
        for h in rest:  # h_n (and c_n)
            st.set(h, u)


register("recurrent", Recurrent())
