"""A built-in multi-label image-text dataset, so `python train.py` runs anywhere.

Each item draws 1-3 of `num_classes` labels. Image features are a noisy sum of
per-class prototypes passed through a fixed random nonlinearity; tags are a bag
of words drawn from per-class word distributions plus background words. Both
modalities therefore carry the label structure, but neither reveals it exactly.
"""
import numpy as np


def make_synthetic(num_items=2000, num_classes=10, image_dim=256, text_dim=300, seed=1234):
    rng = np.random.RandomState(seed)
    labels = np.zeros((num_items, num_classes), np.float32)
    for row in range(num_items):
        labels[row, rng.choice(num_classes, size=rng.randint(1, 4), replace=False)] = 1.0

    prototypes = rng.normal(size=(num_classes, image_dim))
    mixing = rng.normal(size=(image_dim, image_dim)) / np.sqrt(image_dim)
    latent = labels @ prototypes + 1.5 * rng.normal(size=(num_items, image_dim))
    images = np.maximum(latent @ mixing, 0.0).astype(np.float32)

    word_probs = rng.dirichlet(np.full(text_dim, 0.05), size=num_classes)
    background = rng.dirichlet(np.ones(text_dim))
    texts = np.zeros((num_items, text_dim), np.float32)
    for row in range(num_items):
        classes = np.flatnonzero(labels[row])
        probs = 0.7 * word_probs[classes].mean(axis=0) + 0.3 * background
        words = rng.choice(text_dim, size=rng.randint(5, 20), p=probs)
        texts[row, words] = 1.0
    return images, texts, labels
