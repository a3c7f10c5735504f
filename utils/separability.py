"""How far apart two sets of vectors are: the held-out accuracy of a fresh linear classifier
(logistic regression trained to convergence) that tells them apart.

0.5: indistinguishable to any linear classifier; 1.0: linearly separable. Used to read an
adversarial game (ACMR's modality classifier, a domain discriminator) independently of how
well the live adversary has learned: it is the classifier side's best answer to the current
embeddings (the proxy A-distance is 2 * (2 * accuracy - 1)).
"""
import numpy as np


def _fit_logistic(x, y, row_weights, l2, max_iterations):
    """Weights (last entry: bias) minimising the weighted mean log-loss + l2 * |w|^2."""
    from scipy.optimize import minimize

    def loss_and_gradient(w):
        z = x @ w
        loss = row_weights @ (np.logaddexp(0.0, z) - y * z) + l2 * (w[:-1] @ w[:-1])
        probability = 0.5 * (1.0 + np.tanh(0.5 * z))  # the sigmoid, overflow-free
        gradient = x.T @ (row_weights * (probability - y))
        gradient[:-1] += 2.0 * l2 * w[:-1]
        return loss, gradient

    return minimize(loss_and_gradient, np.zeros(x.shape[1]), jac=True, method="L-BFGS-B",
                    options={"maxiter": max_iterations}).x


def linear_separability(train_a, train_b, test_a=None, test_b=None, l2=1e-4, max_iterations=500):
    """{"train": balanced accuracy on the fitted rows, "test": on the held-out rows (the train
    figure when none are given)} of a logistic regression telling rows of a from rows of b.

    Features are standardised with the training rows' mean and spread (so the L2 penalty
    treats every direction alike); both sets weigh the same whatever their sizes."""
    train_a, train_b = np.asarray(train_a, np.float64), np.asarray(train_b, np.float64)
    rows = np.concatenate([train_a, train_b])
    mean, spread = rows.mean(axis=0), rows.std(axis=0) + 1e-12

    def design(x):
        return np.concatenate([(np.asarray(x, np.float64) - mean) / spread, np.ones((len(x), 1))], axis=1)

    targets = np.concatenate([np.ones(len(train_a)), np.zeros(len(train_b))])
    row_weights = np.concatenate([np.full(len(train_a), 0.5 / len(train_a)),
                                  np.full(len(train_b), 0.5 / len(train_b))])
    w = _fit_logistic(design(rows), targets, row_weights, l2, max_iterations)

    def balanced_accuracy(a, b):
        return float(0.5 * np.mean(design(a) @ w > 0) + 0.5 * np.mean(design(b) @ w <= 0))

    train = balanced_accuracy(train_a, train_b)
    return {"train": train, "test": train if test_a is None else balanced_accuracy(test_a, test_b)}
