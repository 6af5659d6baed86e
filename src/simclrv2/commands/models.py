"""``simclrv2 models``: every registered encoder with its parameter count; with ``--official``, the
released SimCLRv2 models by name, their sizes and the paper's ImageNet top-1."""

from __future__ import annotations

import argparse


def cmd_models(args: argparse.Namespace) -> int:
    """Print every registered encoder with its parameter count (or the official names)."""
    if getattr(args, "official", False):
        return official_models()
    from ..models import RELEASED, encoder_parameter_count, list_models

    print(f"{'model':<14} {'params (M)':>10}  released")
    for name in list_models():
        params = encoder_parameter_count(name) / 1e6
        print(f"{name:<14} {params:>10.1f}  {'yes' if name in RELEASED else ''}")
    print("\nAny width works (e.g. r18_0.25x_sk0 for quick CPU runs); --small-images on swaps in the CIFAR stem.\n"
          "`simclrv2 models --official` lists the released weights, usable by name (official:r50_1x_sk1).")
    return 0


def official_models() -> int:
    """The official names, the encoder's parameters and the paper's ImageNet top-1, and the cache."""
    from ..official.catalogue import MODELS, VARIANTS, OfficialName, base_url, home

    print(f"{'name':<36} {'params (M)':>10} {'top-1 %':>8}  {'measured as':<22} cached")
    for model, paper in MODELS.items():
        for variant in VARIANTS.values():
            name = OfficialName(model, variant)
            top1, how = ((paper.linear, "linear eval") if not variant.suffix else
                         (getattr(paper, variant.suffix), "fine-tuned, " + variant.suffix[10:-3] + "% labels"))
            print(f"{name.spec:<36} {paper.params_m:>10.1f} {top1:>8.1f}  {how:<22} "
                  f"{'yes' if name.cached.is_file() else ''}")
    print(f"\nImageNet top-1 from the paper (Table 1); params: the encoder's. official:<model> is the pretrained model "
          "with its linear-eval head; /finetuned_* are classifiers (1000 ImageNet classes).\n"
          f"Source: {base_url()}/simclrv2/ (SIMCLRV2_OFFICIAL_URL); cache: {home() / 'official'} (SIMCLRV2_HOME); "
          "`simclrv2 download NAME` fetches one.")
    return 0
