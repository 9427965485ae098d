"""Figure of a matched-simulation calibration (``braggflow.calibration``): measured against simulated, per setting."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from . import pyplot, save_figure


def _ncells(spec: dict[str, Any]) -> str:
    if spec["dist"] == "fixed":
        return f"{spec['value']:g}"
    if spec["dist"] == "uniform":
        return f"uniform {spec['low']:g}-{spec['high']:g}"
    return f"lognormal, median {spec['median']:g}"


def _arr(values) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], float)


def plot_calibration(path: str | Path, report: dict[str, Any], title: str = "") -> None:
    """Four panels: background profile, photons against DIALS I/sigma with the cut, spot photons above the cut,
    and the PSF's peak share, each with the calibrated value marked."""
    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    fig.subplots_adjust(left=0.08, right=0.98, top=0.9, bottom=0.08, hspace=0.38, wspace=0.28)
    st, ms, cut = report["settings"], report["measured"], report["settings"]["peak_finder"]["score_min_photons"]
    fig.suptitle(f"{title}: {report['detector_kind']} detector, {report['frames']} frames "
                 f"({report['indexed_frames']} indexed)", fontsize=13)

    ax = axes[0, 0]
    bf = report["background_fit"]
    e = np.array(bf["q_edges_inv_angstrom"])
    qc = 0.5 * (e[1:] + e[:-1])
    ax.plot(qc, _arr(bf["measured"]), "o", color="k", label="measured (clipped mean)")
    ax.plot(qc, _arr(bf["model"]), "-", color="tab:blue",
            label=f"water model, jet {st['jet_thickness_um']:g} um, {st['beam']['photons_per_pulse']:.3g} ph/pulse")
    ax.set(xlabel="q (1/A)", ylabel="photons / pixel",
           title=f"background (rms residual {bf['rms_relative_residual']:.0%})")
    ax.legend(fontsize=9)

    ax = axes[0, 1]
    refl = report["reflections"]
    ios, net = np.array(refl["i_over_sigma"], float), np.array(refl["net_photons"], float)
    ok = (ios > 0) & (net > 0)
    ax.loglog(ios[ok], net[ok], ".", color="0.5", ms=3, label="DIALS-integrated reflections")
    pc = report["photon_cut"]
    if "exponent" in pc:
        x = np.geomspace(max(ios[ok].min(), 0.3), ios[ok].max(), 50) if ok.any() else np.array([1.0, 10.0])
        a = pc["photons"] / report["min_i_over_sigma"] ** pc["exponent"]
        ax.loglog(x, a * x ** pc["exponent"], "-", color="tab:red", label=f"fit, exponent {pc['exponent']:.2f}")
    ax.axvline(report["min_i_over_sigma"], color="tab:red", ls=":")
    ax.axhline(cut, color="tab:red", ls="--", label=f"cut: {cut:g} photons at I/sigma {report['min_i_over_sigma']:g}")
    ax.set(xlabel="DIALS I/sigma", ylabel="net photons (5x5 box)", title="the photon cut the evaluator's I/sigma sets")
    ax.legend(fontsize=9)

    ax = axes[1, 0]
    real = net[net >= cut]
    sim = np.array(report["simulated_net_photons"], float)
    if len(real) or len(sim):
        hi = max(real.max() if len(real) else cut * 2, sim.max() if len(sim) else cut * 2)
        bins = np.geomspace(cut, hi * 1.01, 25)
        ax.hist(real, bins=bins, histtype="step", lw=2, color="k", density=True,
                label=f"measured: {ms['reflections_above_cut_per_frame']:.1f} per frame")
        ax.hist(sim, bins=bins, histtype="step", lw=2, color="tab:blue", density=True,
                label=f"simulated (Ncells {_ncells(st['simulation']['ncells'])})")
        ax.set_xscale("log")
    ax.set(xlabel="net photons of reflections above the cut", ylabel="density", title="spot photons")
    ax.legend(fontsize=9)

    ax = axes[1, 1]
    rows = report["psf_fit"]
    ax.plot([r["psf_fwhm_um"] for r in rows], _arr([r["peak_share"] for r in rows]), "o-", color="tab:blue",
            label="simulated")
    ax.axhline(ms["peak_share"], color="k", ls="--", label=f"measured {ms['peak_share']:.2f}")
    ax.axvline(st["simulation"]["psf_fwhm_um"], color="tab:red", ls=":",
               label=f"psf_fwhm_um {st['simulation']['psf_fwhm_um']:g}")
    of = report["outlier_fit"]
    ax.set(xlabel="PSF FWHM (um)", ylabel="share of a spot's photons in its brightest pixel",
           title=f"spot profile; lone pixels {of['measured_per_mpx'] or 0:.0f}/Mpx measured, "
                 f"{of['simulated_per_mpx']:.0f} from noise")
    ax.legend(fontsize=9)
    save_figure(fig, path)
