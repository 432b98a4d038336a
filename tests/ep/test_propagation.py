"""ep.propagation: the propagator against its explicit definition, label propagation's scores, and gradients."""

import math

import torch

from ep.propagation import affinities, embedding_propagation, label_propagation, label_propagation_logits, propagate


def explicit_propagator(z, alpha):
    """One task's P = (I - alpha S)^-1 as upstream writes it: loops, torch.inverse. z: n x c."""
    n, c = z.shape
    d = torch.tensor([[float(((z[i] - z[j]) ** 2).sum()) for j in range(n)] for i in range(n)], dtype=z.dtype)
    d = d / math.sqrt(c)
    d = d / d[d != 0].std()
    a = torch.exp(-d) * (1 - torch.eye(n, dtype=z.dtype))
    isqrt = 1 / torch.sqrt(1e-4 + a.sum(-1))
    s = a * isqrt[None, :] * isqrt[:, None]
    return torch.inverse(torch.eye(n, dtype=z.dtype) - alpha * s)


def test_propagation_equals_the_explicit_inverse():
    torch.manual_seed(0)
    z = torch.randn(3, 7, 4, dtype=torch.float64)
    for t in range(3):
        p = explicit_propagator(z[t], 0.5)
        torch.testing.assert_close(embedding_propagation(z)[t], p @ z[t])
        b = torch.randn(7, 2, dtype=torch.float64)
        expected = explicit_propagator(z[t], 0.3) @ b
        torch.testing.assert_close(propagate(affinities(z[t:t + 1]), b[None], 0.3)[0], expected)


def test_affinities_are_symmetric_with_a_zero_diagonal():
    a = affinities(torch.randn(2, 6, 3, dtype=torch.float64))
    torch.testing.assert_close(a, a.transpose(1, 2))
    assert (a.diagonal(dim1=1, dim2=2) == 0).all() and (a[:, 0, 1:] > 0).all()


def test_label_propagation_is_the_row_normalised_propagator_times_the_labels():
    torch.manual_seed(1)
    z = torch.randn(1, 8, 5, dtype=torch.float64)
    labels = torch.tensor([[0, 1, 2, -1, -1, -1, -1, -1]])
    scores = label_propagation(z, labels, ways=3, alpha=0.2)
    p = explicit_propagator(z[0], 0.2)
    y = torch.zeros(8, 3, dtype=torch.float64)
    y[[0, 1, 2], [0, 1, 2]] = 1
    torch.testing.assert_close(scores[0], torch.nn.functional.normalize(p, p=1, dim=-1) @ y)
    assert (scores >= 0).all() and (scores.sum(-1) <= 1 + 1e-12).all()


def test_label_propagation_rows_form_a_distribution_when_every_node_is_labelled():
    z = torch.randn(2, 9, 4, dtype=torch.float64)
    labels = torch.arange(9).remainder(3).expand(2, 9)
    scores = label_propagation(z, labels, ways=3)
    torch.testing.assert_close(scores.sum(-1), torch.ones(2, 9, dtype=torch.float64))


def test_two_clusters_are_labelled_from_one_label_each():
    g = torch.Generator().manual_seed(2)
    centres = torch.tensor([[0.0, 0.0], [10.0, 10.0]])
    z = torch.cat([centres[0] + torch.randn(10, 2, generator=g), centres[1] + torch.randn(10, 2, generator=g)])
    labels = torch.full((20,), -1)
    labels[0], labels[10] = 0, 1
    pred = label_propagation(z[None], labels[None], ways=2)[0].argmax(-1)
    assert pred.tolist() == [0] * 10 + [1] * 10


def test_gradients_flow_through_the_propagation():
    torch.manual_seed(3)
    z = torch.randn(2, 6, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([[0, 1, -1, -1, -1, -1], [1, 0, -1, -1, -1, -1]])
    assert torch.autograd.gradcheck(lambda x: embedding_propagation(x), (z,))
    assert torch.autograd.gradcheck(lambda x: label_propagation_logits(x, labels, 2), (z,))


def test_large_graphs_of_several_tasks_solve_on_several_threads():
    """torch's batched CPU solve fails for several matrices of a few hundred rows on 2 threads (MKL); propagate
    must not."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        z = torch.randn(3, 300, 8)
        out = embedding_propagation(z)
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(out[1], embedding_propagation(z[1:2])[0])
