"""Overlays for a person: particle outlines coloured by sphericity, or the texture ROIs."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def save_overlay(description, path: str | Path) -> Path:
    """Write a PNG of ``description`` (a :class:`models.describe.ImageDescription`) to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import cm, colors
    from matplotlib.patches import Rectangle
    from skimage.measure import find_contours

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = description.pixels
    h, w = img.shape
    fig, ax = plt.subplots(figsize=(8, 8 * h / w + 0.6), dpi=120)
    ax.imshow(img, cmap="gray", vmin=0, vmax=1)
    ax.set_axis_off()
    d = description.descriptors
    if description.kind == "particles" and description.labels is not None:
        norm = colors.Normalize(vmin=0.6, vmax=1.0)
        cmap = plt.get_cmap("viridis")
        kept = dict(zip(description.particles["particle_id"], description.particles["sphericity"]))
        labels = description.labels
        from scipy import ndimage as ndi

        for index, slc in enumerate(ndi.find_objects(labels)):
            if slc is None:
                continue
            lab = index + 1
            pad = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in slc)
            mask = np.pad(labels[pad] == lab, 1).astype(float)
            colour = cmap(norm(kept[lab])) if lab in kept else (1.0, 0.3, 0.3, 0.6)
            for c in find_contours(mask, 0.5):
                ax.plot(c[:, 1] - 1 + pad[1].start, c[:, 0] - 1 + pad[0].start, color=colour,
                        lw=1.2 if lab in kept else 0.6, ls="-" if lab in kept else ":")
        fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, fraction=0.035, pad=0.01,
                     label="sphericity Ψ = 4πA/P² (red dotted: excluded)")
        ax.set_title(f"{Path(description.image).name}: n={d['n_particles']}  D50={d['d50_um']:.3g} µm  "
                     f"Ψ={d['sphericity_mean']:.3f}±{d['sphericity_std']:.3f}", fontsize=9)
    elif description.texture is not None:
        t = description.texture
        for (y0, x0), e in zip(t.roi_corners, t.roi_energies):
            ax.add_patch(Rectangle((x0, y0), t.roi_side_px, t.roi_side_px, fill=False, ec="yellow", lw=1))
            ax.text(x0 + 4, y0 + 14, f"{e:.2f}", color="yellow", fontsize=7)
        ax.set_title(f"{Path(description.image).name}: texture={t.texture:.3f} "
                     f"(energy {t.texture_energy:.3f}, {len(t.roi_corners)} ROIs)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
