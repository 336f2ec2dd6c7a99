"""Fakes for the evaluation tests: a colour-grouping model that counts encoder calls, and a tiny dataset
with the interface of ``pgseg_core.eval.datasets.SegDataset`` (info, class_spec, len, iter)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

from pgseg_core.inference import ClassSpec

AXES = {"red": 0, "green": 1, "blue": 2, "sky": 2}


class CountingColourModel(torch.nn.Module):
    """Fake PGSeg-contract model: stage 0 groups 16×16 patches by their dominant colour channel (3 groups),
    stage 1 is the identity; group embeddings are the colour axes; "red"/"green"/"blue" texts embed on
    their axis. ``encode_calls`` counts image-encoder forward passes."""

    def __init__(self) -> None:
        super().__init__()
        self.encode_calls = 0

    def encode_image(self, images: torch.Tensor, dense: bool = False) -> SimpleNamespace:
        self.encode_calls += 1
        b = images.shape[0]
        tokens = F.avg_pool2d(images, 16)  # [B,3,h,w]
        gh, gw = tokens.shape[-2:]
        a0 = (8.0 * tokens.flatten(2)).softmax(dim=1)  # [B,3,N]
        a1 = (torch.eye(3) * 4.0).softmax(dim=0).expand(b, 3, 3).clone()
        return SimpleNamespace(
            image_emb=tokens.mean(dim=(2, 3)),
            group_emb=torch.eye(3).expand(b, 3, 3).clone() + 0.1,
            assign_soft=[a0, a1],
            assign_hard=[F.one_hot(a.argmax(1), a.shape[1]).transpose(1, 2).float() for a in (a0, a1)],
            grid=(gh, gw),
        )

    def class_embeddings(self, names: list[str], templates: list[str]) -> torch.Tensor:
        rows = []
        for n in names:
            v = torch.full((3,), 0.1)
            v[AXES.get(n.split()[-1], sum(map(ord, n)) % 3)] = 1.0
            if "{}" in templates[0] and templates[0] != "{}":
                v = v + 0.01 * len(templates[0])  # another template set gives other embeddings
            rows.append(v)
        return F.normalize(torch.stack(rows), dim=-1)

    def logit_scale_value(self) -> float:
        return 20.0


def colour_image(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """A noisy image of red / green / blue vertical bands and its label map (0 bg = blue, 1 red, 2 green)."""
    img = np.zeros((h, w, 3), dtype=np.uint8)
    label = np.zeros((h, w), dtype=np.uint8)
    cuts = sorted(rng.choice(np.arange(8, w - 8), size=2, replace=False))
    for channel, (a, b) in zip(rng.permutation(3).tolist(), zip([0, *cuts], [*cuts, w])):
        img[:, a:b, channel] = 200
        label[:, a:b] = {0: 1, 1: 2, 2: 0}[channel]
    img = np.clip(img.astype(np.int16) + rng.integers(-40, 40, img.shape), 0, 255).astype(np.uint8)
    label[: h // 8, : w // 8] = 255
    return img, label


class FakeDataset:
    """In-memory benchmark dataset: ``n`` colour-band images of varying size."""

    def __init__(
        self,
        n: int = 4,
        has_background: bool = True,
        seed: int = 0,
        bad_keys: tuple[str, ...] = (),
        bg_words: tuple[str, ...] = (),
    ) -> None:
        rng = np.random.default_rng(seed)
        self.samples = []
        for i in range(n):
            h, w = int(rng.integers(40, 90)), int(rng.integers(60, 140))
            img, label = colour_image(rng, h, w)
            if not has_background:
                label = np.where(label == 255, 255, np.where(label == 0, 2, label - 1)).astype(np.uint8)
                # no background: classes red 0, green 1, blue 2
            key = f"img_{i:03d}"
            if key in bad_keys:
                label = label[:-3]
            self.samples.append(SimpleNamespace(key=key, image=img, label=label, classes=[], split="val"))
        names = ["red", "green"] if has_background else ["red", "green", "blue"]
        self.names = names
        self.bg_words = bg_words
        self.info = SimpleNamespace(
            name="fake" + ("21" if has_background else "20"),
            has_background=has_background,
            num_classes=len(names),
        )
        self.spec_calls: list[str] = []

    def class_spec(self, protocol: str) -> ClassSpec:
        self.spec_calls.append(protocol)
        return ClassSpec.from_names(self.names, self.bg_words)

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self):
        return iter(self.samples)
