"""Pictures of a search: per-layer kept fractions, and the fitness curve (PNG bytes)."""

from __future__ import annotations

from ..model import Widths


def _png(fig) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def plot_widths(dense: Widths, uniform: Widths, searched: Widths,
                labels: tuple[str, str] = ("uniform (Putri split)", "searched")) -> bytes:
    """Kept fraction of KV-head groups and FFN neurons per layer, two distributions against the dense model."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    layers = list(range(len(dense)))
    panels = ((axes[0], "kv_heads", "attention (KV-head groups kept)"), (axes[1], "ffn", "FFN neurons kept"))
    for ax, key, title in panels:
        def kept(ws: Widths, key: str = key) -> list[float]:
            return [a / d if d else 0 for a, d in zip(getattr(ws, key), getattr(dense, key))]

        ax.plot(layers, kept(uniform), "o--", label=labels[0])
        ax.plot(layers, kept(searched), "s-", label=labels[1])
        ax.set_ylabel("kept fraction")
        ax.set_ylim(-0.05, 1.05)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend()
    axes[1].set_xlabel("layer")
    data = _png(fig)
    plt.close(fig)
    return data


def plot_fitness(iterations: list[dict]) -> bytes:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    x = 0
    for it in iterations:
        ys = [it["start_fitness"]] + [g["best"] for g in it["generations"]]
        ax.plot(range(x, x + len(ys)), ys, "-", label=f"iteration {it['iteration'] + 1} (step {it['step']:.4g})")
        x += len(ys) - 1
    ax.set_xlabel("generation")
    ax.set_ylabel("KL(dense || candidate) per token")
    ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    data = _png(fig)
    plt.close(fig)
    return data
