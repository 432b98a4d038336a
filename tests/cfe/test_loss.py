"""cfe.loss.cfe_loss against hand-computed numbers (docs/design.md, algorithms: CFE): logits mu_n . sg([mu; queue])
/ T, target n, gradient only through the first factor mu and only through q; one group is the whole batch.
cfe.loss.moco_loss likewise: cross-entropy of [q_n . k_n, q_n . queue] / T with target 0, gradient only through q."""

import numpy as np
import pytest
import torch

from cfe.loss import cfe_loss, moco_loss


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _reference(q, k, queue, t):
    """Loss and dloss/dq in numpy: mu = (q+k)/2, logits = mu @ [mu; queue].T / t with the right side constant."""
    n = len(q)
    mu = (q + k) / 2
    keys = np.concatenate([mu, queue])
    p = _softmax(mu @ keys.T / t)
    loss = -np.log(p[np.arange(n), np.arange(n)]).mean()
    g_logits = (p - np.eye(n, len(keys))) / n  # d mean CE / d logits
    g_mu = g_logits @ keys / t  # the keys side is a stop-gradient
    return loss, g_mu / 2  # dmu/dq = 1/2


# N=2, C=2, K=1: two unit queries, two unit keys, one queue entry, T = 0.5
Q = np.array([[1.0, 0.0], [0.6, 0.8]])
K = np.array([[0.8, 0.6], [0.0, 1.0]])
QUEUE = np.array([[-1.0, 0.0]])
T = 0.5


def test_two_by_two_case_by_hand():
    # mu_0 = (0.9, 0.3), mu_1 = (0.3, 0.9); row n of the logits = [mu_n.mu_0, mu_n.mu_1, mu_n.queue_0] / T
    logits = np.array([[0.90, 0.54, -0.90], [0.54, 0.90, -0.30]]) / T
    want_loss = -np.mean([np.log(_softmax(logits)[0, 0]), np.log(_softmax(logits)[1, 1])])
    p = _softmax(logits)
    keys = np.array([[0.9, 0.3], [0.3, 0.9], [-1.0, 0.0]])
    onehot = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    want_grad_q = 0.5 * ((p - onehot) / 2) @ keys / T

    q = torch.tensor(Q, requires_grad=True)
    k = torch.tensor(K, requires_grad=True)  # even a key that asks for a gradient must not get one
    queue = torch.tensor(QUEUE, requires_grad=True)
    loss = cfe_loss(q, k, queue, T)
    loss.backward()
    assert loss.item() == pytest.approx(want_loss, rel=1e-12)
    assert loss.item() == pytest.approx(0.4353, abs=1e-4)  # (0.4148 + 0.4558) / 2, written out
    np.testing.assert_allclose(q.grad.numpy(), want_grad_q, rtol=1e-10, atol=1e-12)
    assert k.grad is None and queue.grad is None


def test_gradient_is_the_stop_gradient_one_not_the_one_through_both_factors():
    """cfe_loss's dloss/dq is the stop-gradient reference's and clearly not the gradient through both factors of
    mu_n . mu_m (a cfe_loss that forgot the stop-gradient gives that one): the two differ on this input."""
    q = torch.tensor(Q, requires_grad=True)
    cfe_loss(q, torch.tensor(K), torch.tensor(QUEUE), T).backward()
    q_both = torch.tensor(Q, requires_grad=True)
    mu = (q_both + torch.tensor(K)) / 2
    logits = mu @ torch.cat([mu, torch.tensor(QUEUE)]).T / T  # no stop-gradient on the right side
    torch.nn.functional.cross_entropy(logits, torch.arange(2)).backward()
    _, stop_grad = _reference(Q, K, QUEUE, T)
    np.testing.assert_allclose(q.grad.numpy(), stop_grad, rtol=1e-10, atol=1e-12)
    assert not np.allclose(q.grad.numpy(), q_both.grad.numpy(), atol=1e-3)


@pytest.mark.parametrize("n,c,k,t", [(5, 3, 7, 0.2), (1, 4, 2, 1.0), (8, 16, 32, 0.07)])
def test_one_group_is_the_whole_batch_loss_of_the_numpy_reference(n, c, k, t):
    g = torch.Generator().manual_seed(n * 100 + k)
    q = torch.nn.functional.normalize(torch.randn(n, c, generator=g, dtype=torch.float64), dim=1)
    key = torch.nn.functional.normalize(torch.randn(n, c, generator=g, dtype=torch.float64), dim=1)
    queue = torch.nn.functional.normalize(torch.randn(k, c, generator=g, dtype=torch.float64), dim=1)
    want_loss, want_grad = _reference(q.numpy(), key.numpy(), queue.numpy(), t)
    q.requires_grad_()
    loss = cfe_loss(q, key, queue, t, groups=1)
    loss.backward()
    assert loss.item() == pytest.approx(want_loss, rel=1e-10)
    np.testing.assert_allclose(q.grad.numpy(), want_grad, rtol=1e-8, atol=1e-12)


def test_agreeing_views_score_lower_than_disagreeing_ones():
    """The loss rewards |mu_n|^2 (two views agreeing): keys equal to the queries beat orthogonal keys."""
    q = torch.eye(4, dtype=torch.float64)[:2]
    queue = torch.eye(4, dtype=torch.float64)[2:]
    agree = cfe_loss(q, q.clone(), queue, 0.2)
    disagree = cfe_loss(q, q.flip(0), queue, 0.2)  # each key is the other image's query
    assert agree < disagree


def test_shape_mismatch_is_refused():
    with pytest.raises(AssertionError):
        cfe_loss(torch.zeros(2, 3), torch.zeros(3, 3), torch.zeros(4, 3), 0.2)
    with pytest.raises(AssertionError):
        cfe_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(4, 5), 0.2)
    with pytest.raises(AssertionError, match="does not split into 3 groups"):
        cfe_loss(torch.zeros(4, 3), torch.zeros(4, 3), torch.zeros(4, 3), 0.2, groups=3)


def test_groups_compare_each_centre_only_within_its_group():
    """groups=2 on a batch of 4 is the mean of the two half-batch losses, each against the whole queue."""
    g = torch.Generator().manual_seed(0)
    q, k = (torch.nn.functional.normalize(torch.randn(4, 3, generator=g, dtype=torch.float64), dim=1)
            for _ in range(2))
    queue = torch.nn.functional.normalize(torch.randn(5, 3, generator=g, dtype=torch.float64), dim=1)
    q1 = q.clone().requires_grad_()
    grouped = cfe_loss(q1, k, queue, T, groups=2)
    grouped.backward()
    q2 = q.clone().requires_grad_()
    halves = (cfe_loss(q2[:2], k[:2], queue, T) + cfe_loss(q2[2:], k[2:], queue, T)) / 2
    halves.backward()
    torch.testing.assert_close(grouped, halves, rtol=1e-12, atol=0)
    torch.testing.assert_close(q1.grad, q2.grad, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(grouped, cfe_loss(q, k, queue, T))  # the whole-batch loss differs


def _moco_reference(q, k, queue, t):
    """MoCo's loss and dloss/dq in numpy: logits [q_n . k_n, q_n . queue_j] / t, target 0, k and queue constant."""
    n = len(q)
    logits = np.concatenate([(q * k).sum(1, keepdims=True), q @ queue.T], axis=1) / t
    p = _softmax(logits)
    loss = -np.log(p[:, 0]).mean()
    g_logits = p.copy()
    g_logits[:, 0] -= 1
    g_logits /= n
    g_q = (g_logits[:, :1] * k + g_logits[:, 1:] @ queue) / t
    return loss, g_q


def test_moco_two_by_two_case_by_hand():
    """The same Q, K, queue and T as the CFE case: row n's logits are [q_n . k_n, q_n . queue_0] / T."""
    logits = np.array([[0.8, -1.0], [0.8, -0.6]]) / T
    want = np.mean(np.log1p(np.exp(logits[:, 1] - logits[:, 0])))  # -log softmax(logits)[0]
    q = torch.tensor(Q, requires_grad=True)
    k = torch.tensor(K, requires_grad=True)  # neither the key nor the queue may get a gradient
    queue = torch.tensor(QUEUE, requires_grad=True)
    loss = moco_loss(q, k, queue, T)
    loss.backward()
    assert loss.item() == pytest.approx(want, rel=1e-12)
    assert loss.item() == pytest.approx((0.026957 + 0.059033) / 2, abs=1e-6)  # log(1 + e^-3.6), log(1 + e^-2.8)
    np.testing.assert_allclose(q.grad.numpy(), _moco_reference(Q, K, QUEUE, T)[1], rtol=1e-10, atol=1e-12)
    assert k.grad is None and queue.grad is None


@pytest.mark.parametrize("n,c,k,t", [(5, 3, 7, 0.2), (1, 4, 2, 1.0), (8, 16, 32, 0.07)])
def test_moco_is_cross_entropy_of_the_positive_and_the_queue_with_target_0(n, c, k, t):
    g = torch.Generator().manual_seed(n * 100 + k)
    q, key = (torch.nn.functional.normalize(torch.randn(n, c, generator=g, dtype=torch.float64), dim=1)
              for _ in range(2))
    queue = torch.nn.functional.normalize(torch.randn(k, c, generator=g, dtype=torch.float64), dim=1)
    logits = torch.cat([torch.einsum("nc,nc->n", q, key)[:, None], torch.einsum("nc,kc->nk", q, queue)], 1) / t
    want = torch.nn.functional.cross_entropy(logits, torch.zeros(n, dtype=torch.long))
    torch.testing.assert_close(moco_loss(q, key, queue, t), want, rtol=1e-12, atol=0)
    want_loss, want_grad = _moco_reference(q.numpy(), key.numpy(), queue.numpy(), t)
    q.requires_grad_()
    loss = moco_loss(q, key, queue, t)
    loss.backward()
    assert loss.item() == pytest.approx(want_loss, rel=1e-10)
    np.testing.assert_allclose(q.grad.numpy(), want_grad, rtol=1e-8, atol=1e-12)


def test_moco_gradient_check():
    """torch.autograd.gradcheck: the analytic dloss/dq equals finite differences (k and the queue held fixed)."""
    g = torch.Generator().manual_seed(1)
    q = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    k, queue = torch.randn(3, 4, generator=g, dtype=torch.float64), torch.randn(5, 4, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: moco_loss(x, k, queue, 0.5, groups=3), (q,))


def test_moco_groups_change_nothing_the_batch_is_never_its_own_negative():
    """MoCo's per-GPU loss is the mean over its rows: groups=2 is the mean of the two half-batch losses, and, as no
    image of the batch is another's negative, the whole-batch loss too (unlike the CFE loss)."""
    g = torch.Generator().manual_seed(0)
    q, k = (torch.nn.functional.normalize(torch.randn(4, 3, generator=g, dtype=torch.float64), dim=1)
            for _ in range(2))
    queue = torch.nn.functional.normalize(torch.randn(5, 3, generator=g, dtype=torch.float64), dim=1)
    grouped = moco_loss(q, k, queue, T, groups=2)
    halves = (moco_loss(q[:2], k[:2], queue, T) + moco_loss(q[2:], k[2:], queue, T)) / 2
    torch.testing.assert_close(grouped, halves, rtol=1e-12, atol=0)
    torch.testing.assert_close(grouped, moco_loss(q, k, queue, T), rtol=1e-12, atol=0)
    with pytest.raises(AssertionError, match="does not split into 3 groups"):
        moco_loss(q, k, queue, T, groups=3)
    with pytest.raises(AssertionError):
        moco_loss(q, k[:3], queue, T)


def test_moco_backward_survives_the_queue_overwritten_after_the_forward_pass():
    """CFE.forward enqueues (in place) between the loss and its backward pass: moco_loss must have copied the
    queue, or autograd refuses (a tensor it saved was modified) or differentiates against the new keys."""
    q = torch.tensor(Q, requires_grad=True)
    queue = torch.tensor(QUEUE)
    loss = moco_loss(q, torch.tensor(K), queue, T)
    queue.mul_(-3)
    loss.backward()
    np.testing.assert_allclose(q.grad.numpy(), _moco_reference(Q, K, QUEUE, T)[1], rtol=1e-10, atol=1e-12)
