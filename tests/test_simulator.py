"""Physics tests of braggflow.simulator: nanoBragg reference images, a brute-force per-pixel reference,
the fast path's screening bound, truth positions, and input validation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from braggflow.simulator import (
    R_E_SQ_M2,
    Panel,
    StructureFactorTable,
    _make_setup,
    _single_pass_block,
    get_array_module,
    load_hkl_text,
    simulate_still,
    truth_reflections,
)
from helpers.nanobragg_cases import (CELL, DATA, MOSFLM_TO_DIALS, _nanobragg_case, _rot, _still,  # noqa: F401
                                     nanobragg_reciprocal_mosflm)

TOL_MAX = 1e-3  # max |difference| / image max
TOL_TOTAL = 1e-3  # |total ratio - 1|


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.standard_normal(4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def _log_vectors(name: str, header: str) -> np.ndarray:
    lines = (DATA / name).read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = [line.split()[1:] for line in lines[start + 2:start + 5]]
    return np.array(rows, dtype=float)  # rows X, Y, Z; columns a, b, c


@pytest.fixture(scope="module")
def sf_table() -> StructureFactorTable:
    return load_hkl_text(DATA / "F_random_1ic6cell.hkl")


@pytest.fixture(scope="module")
def nb_A() -> np.ndarray:
    return MOSFLM_TO_DIALS @ nanobragg_reciprocal_mosflm()


def test_cell_and_misset_reproduce_nanobragg_log():
    recip = nanobragg_reciprocal_mosflm()
    np.testing.assert_allclose(recip, _log_vectors("case1_mono_nanoBragg_log.txt", "reciprocal-space"), atol=6e-9)
    real = np.linalg.inv(recip).T  # columns a, b, c
    np.testing.assert_allclose(real, _log_vectors("case1_mono_nanoBragg_log.txt", "real-space"), atol=6e-8)


def test_detector_from_beam_center_matches_nanobragg_dials_origin():
    det = Panel.from_beam_center(100.0, (1024 / 2 + 1, 768 / 2 + 1), 0.075, 1024, 768)
    np.testing.assert_allclose(det.origin_mm, (-38.475, 28.875, -100.0))
    assert det.close_distance_mm == pytest.approx(100.0)
    x, y, fwd = det.ray_to_px(np.array([[0.0, 0.0, -1.0]]))
    assert fwd[0] and x[0] == pytest.approx(513.0) and y[0] == pytest.approx(385.0)


@pytest.mark.parametrize("name", ["case1_mono", "case2_poly_mosaic"])
def test_reproduces_nanobragg_reference(name, sf_table, nb_A):
    det, kwargs, ref = _nanobragg_case(name)
    still = _still(nb_A, **kwargs)
    img = simulate_still(still, det, sf_table)
    assert img.shape == ref.shape == (768, 1024) and img.dtype == np.float64
    rel_max = np.abs(img - ref).max() / ref.max()
    ratio = img.sum() / ref.sum()
    assert rel_max <= TOL_MAX, f"{name}: max|diff|/max = {rel_max:.3g}"
    assert abs(ratio - 1) <= TOL_TOTAL, f"{name}: total ratio = {ratio:.6f}"
    # with nanoBragg's once-per-pixel Omega and P, the all-sample average is nanoBragg's sum to rounding
    exact = simulate_still(_still(nb_A, first_subpixel_factors=True, **kwargs), det, sf_table, exhaustive=True)
    assert np.abs(exact - ref).max() <= 1e-5 * ref.max()
    assert exact.sum() == pytest.approx(ref.sum(), rel=1e-5)


# ------------------------------------------------------------------------------------------------
# brute-force reference: literal per-pixel, per-sample loops following nanoBragg.c
# ------------------------------------------------------------------------------------------------
def brute_force(A, det, sf, wavelengths, weights, umats, ncells, shape, fluence, oversample, kahn, pol_axis):
    o, f, s = (np.asarray(v, dtype=float) for v in (det.origin_mm, det.fast_axis, det.slow_axis))
    px = det.pixel_size_mm
    incident = np.array([0.0, 0.0, -1.0])
    b_in = np.cross(pol_axis, incident)
    b_in /= np.linalg.norm(b_in)
    e_in = np.cross(incident, b_in)
    e_in /= np.linalg.norm(e_in)
    normal = np.cross(f, s) / np.linalg.norm(np.cross(f, s))
    close = abs(o @ normal)
    weights = np.asarray(weights, dtype=float) / np.sum(weights)
    na, nb, nc = ncells
    lo = sf.hkl_min

    def lookup(h, k, l):
        key = (h - lo[0], k - lo[1], l - lo[2])
        if all(0 <= key[i] < sf.amplitudes.shape[i] for i in range(3)):
            return sf.amplitudes[key]
        return sf.default_F

    def sincg(x, n):
        return n if x == 0 else math.sin(n * x) / math.sin(x)

    domains = [np.asarray(u) @ np.asarray(A) for u in umats]
    real = [np.linalg.inv(a) for a in domains]
    img = np.zeros((det.n_slow, det.n_fast))
    for j in range(det.n_slow):
        for i in range(det.n_fast):
            total = 0.0
            for sub_s in range(oversample):
                for sub_f in range(oversample):
                    pos = o + (i + (sub_f + 0.5) / oversample) * px * f + (j + (sub_s + 0.5) / oversample) * px * s
                    r = math.sqrt(pos @ pos)
                    d = pos / r
                    omega = px * px / (r * r) * close / r
                    cos2t = d @ incident
                    psi = -math.atan2(d @ b_in, d @ e_in)
                    polar = 0.5 * (1 + cos2t ** 2 - kahn * math.cos(2 * psi) * (1 - cos2t ** 2))
                    for a_m, real_m in zip(domains, real):
                        for lam, w in zip(wavelengths, weights):
                            h, k, l = real_m @ ((d - incident) / lam)
                            h0, k0, l0 = (math.ceil(v - 0.5) for v in (h, k, l))
                            if shape == "square":
                                latt = 1.0
                                for v, n in ((h, na), (k, nb), (l, nc)):
                                    if n > 1:
                                        latt *= sincg(math.pi * v, n)
                            elif shape == "round":
                                hrad = ((h - h0) * na) ** 2 + ((k - k0) * nb) ** 2 + ((l - l0) * nc) ** 2
                                u = math.pi * math.sqrt(hrad)
                                sinc3 = 1.0 if u == 0 else 3 * (math.sin(u) - u * math.cos(u)) / u ** 3
                                latt = na * nb * nc * 0.723601254558268 * sinc3
                            else:
                                dr = a_m @ np.array([h - h0, k - k0, l - l0])
                                rad = (dr @ dr) * (na * nb * nc) ** 2
                                if shape == "gauss":
                                    latt = na * nb * nc * math.exp(-rad / 0.63)
                                else:
                                    latt = na * nb * nc * float(rad < 0.3969)
                            total += w / len(domains) * lookup(h0, k0, l0) ** 2 * latt ** 2 * omega * polar
            img[j, i] = total * R_E_SQ_M2 * fluence / oversample ** 2
    return img


def _tilted_detector(n_fast: int, n_slow: int) -> Panel:
    """Off-centre beam, detector rotated about the beam and tilted (2theta-like) about a lab axis."""
    tilt = _rot(1, 25.0) @ _rot(2, 12.0)
    fast = tilt @ np.array([1.0, 0.0, 0.0])
    slow = tilt @ np.array([0.0, -1.0, 0.0])
    origin = tilt @ np.array([-40.0, 35.0, -120.0])
    return Panel(tuple(origin), tuple(fast), tuple(slow), 0.1, n_fast, n_slow)


def _window(det: Panel, x0: int, y0: int, n_fast: int, n_slow: int) -> Panel:
    shift = x0 * np.asarray(det.fast_axis) + y0 * np.asarray(det.slow_axis)
    o = np.asarray(det.origin_mm) + det.pixel_size_mm * shift
    return Panel(tuple(o), det.fast_axis, det.slow_axis, det.pixel_size_mm, n_fast, n_slow)


@pytest.fixture(scope="module")
def constructed_case():
    rng = np.random.default_rng(20240607)
    A = random_rotation(rng) @ np.diag([1 / 52.0, 1 / 61.0, 1 / 83.0])
    mosaic = [np.eye(3)] + [random_rotation(np.random.default_rng(i)) for i in range(2)]
    # small mosaic rotations: 0.3 deg about random axes
    for m in (1, 2):
        axis = rng.standard_normal(3)
        axis /= np.linalg.norm(axis)
        k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
        ang = math.radians(0.3)
        mosaic[m] = np.eye(3) + math.sin(ang) * k + (1 - math.cos(ang)) * k @ k
    kwargs = {
        "wavelengths_A": [1.296, 1.3, 1.305],
        "weights": [0.2, 0.5, 0.3],
        "mosaic_umats": np.array(mosaic),
        "ncells": (7, 9, 5),
        "fluence_photons_per_m2": 3e28,
        "oversample": 2,
        "kahn_factor": 0.8,
        "polarization_axis": (0.3, 1.0, 0.2),
    }
    return A, _tilted_detector(360, 300), kwargs


def test_fast_path_matches_bruteforce_loops(constructed_case, sf_table):
    A, det, kwargs = constructed_case
    still = _still(A, **kwargs)
    truth = truth_reflections(still, det, sf_table)
    assert len(truth) > 5
    best = int(np.argmax(truth.photons))
    x0, y0 = int(truth.x_px[best]) - 12, int(truth.y_px[best]) - 10
    small = _window(det, max(x0, 0), max(y0, 0), 24, 20)
    fast = simulate_still(still, small, sf_table)
    ref = brute_force(A, small, sf_table, kwargs["wavelengths_A"], kwargs["weights"], kwargs["mosaic_umats"],
                      kwargs["ncells"], "square", kwargs["fluence_photons_per_m2"], kwargs["oversample"],
                      kwargs["kahn_factor"], np.asarray(kwargs["polarization_axis"]))
    assert ref.max() > 0
    assert np.abs(fast - ref).max() <= TOL_MAX * ref.max()
    assert fast.sum() == pytest.approx(ref.sum(), rel=TOL_TOTAL)
    # the exhaustive path is the same sum, so it agrees to rounding
    exhaustive = simulate_still(still, small, sf_table, exhaustive=True)
    np.testing.assert_allclose(exhaustive, ref, rtol=2e-5, atol=2e-6 * ref.max())


@pytest.mark.parametrize("shape", ["round", "gauss", "tophat"])
def test_shapes_match_bruteforce_loops(shape, constructed_case, sf_table):
    A, det, kwargs = constructed_case
    kwargs = dict(kwargs, shape=shape, ncells=(9, 9, 9), mosaic_umats=kwargs["mosaic_umats"][:2],
                  wavelengths_A=[1.3, 1.305], weights=[0.6, 0.4])
    still = _still(A, **kwargs)
    truth = truth_reflections(still, det, sf_table)
    best = int(np.argmax(truth.photons))
    small = _window(det, max(int(truth.x_px[best]) - 8, 0), max(int(truth.y_px[best]) - 7, 0), 16, 14)
    fast = simulate_still(still, small, sf_table)
    ref = brute_force(A, small, sf_table, kwargs["wavelengths_A"], kwargs["weights"], kwargs["mosaic_umats"],
                      kwargs["ncells"], shape, kwargs["fluence_photons_per_m2"], kwargs["oversample"],
                      kwargs["kahn_factor"], np.asarray(kwargs["polarization_axis"]))
    assert ref.max() > 0
    assert np.abs(fast - ref).max() <= TOL_MAX * ref.max()
    assert fast.sum() == pytest.approx(ref.sum(), rel=TOL_TOTAL)


@pytest.mark.parametrize("shape", ["square", "round", "gauss", "tophat"])
def test_screened_fast_path_matches_exhaustive(shape, constructed_case, sf_table):
    """The screened path equals the all-pixel, all-sample average within tolerance on a full frame,
    and its per-pixel bound really bounds every pixel's value."""
    A, det, kwargs = constructed_case
    kwargs = dict(kwargs, shape=shape)
    still = _still(A, **kwargs)
    fast = simulate_still(still, det, sf_table)
    full = simulate_still(still, det, sf_table, exhaustive=True)
    assert full.max() > 0
    assert np.abs(fast - full).max() <= 2e-4 * full.max() * (1 + 1e-6)  # rel_tol default
    assert fast.sum() == pytest.approx(full.sum(), rel=TOL_TOTAL)
    st = _make_setup(still, det, sf_table, np)
    _, bound = _single_pass_block(st, 0, det.n_slow, True)
    assert np.all(bound >= full * (1 - 1e-5))


def test_single_sample_path_is_exact(sf_table, nb_A):
    det = Panel.from_beam_center(100.0, (60.3, 40.7), 0.075, 200, 150)
    kwargs = {"wavelengths_A": [1.2], "ncells": (10, 10, 10), "mosaic_umats": [_rot(0, 0.2)]}
    still = _still(nb_A, **kwargs)
    fast = simulate_still(still, det, sf_table)
    full = simulate_still(still, det, sf_table, exhaustive=True)
    np.testing.assert_allclose(fast, full, rtol=1e-6, atol=1e-9 * full.max())


# ------------------------------------------------------------------------------------------------
# truth table
# ------------------------------------------------------------------------------------------------
def _isolated_centroid_errors(img, truth, det, window=8, min_peak_fraction=0.3):
    errors = []
    for i in np.argsort(-truth.photons):
        x, y = truth.x_px[i], truth.y_px[i]
        if truth.peak_fraction[i] < min_peak_fraction or truth.photons[i] < 0.01 * truth.photons.max():
            continue  # weakly excited or (F = 0) empty
        dist = np.hypot(truth.x_px - x, truth.y_px - y)
        dist[i] = np.inf
        if np.any((dist < 1.5 * window) & (truth.peak_fraction > 1e-2)):
            continue  # not isolated
        i0, j0 = int(x) - window, int(y) - window
        if i0 < 0 or j0 < 0 or i0 + 2 * window + 1 > det.n_fast or j0 + 2 * window + 1 > det.n_slow:
            continue
        box = img[j0:j0 + 2 * window + 1, i0:i0 + 2 * window + 1]
        wgt = np.maximum(box - 0.1 * box.max(), 0.0)  # centroid of the spot above 10 % of its peak
        jj, ii = np.mgrid[0:2 * window + 1, 0:2 * window + 1]
        cx = (wgt * (ii + i0 + 0.5)).sum() / wgt.sum()  # DIALS continuous px: centre of pixel i is i + 0.5
        cy = (wgt * (jj + j0 + 0.5)).sum() / wgt.sum()
        errors.append((cx - x, cy - y))
    return np.array(errors)


@pytest.mark.parametrize("poly", [False, True])
def test_truth_positions_match_simulated_centroids(poly, sf_table):
    rng = np.random.default_rng(3)
    rng.standard_normal(4)
    A = random_rotation(rng) @ np.diag([1 / CELL[0], 1 / CELL[1], 1 / CELL[2]])
    det = Panel.from_beam_center(150.0, (200.5, 180.2), 0.075, 400, 360)
    kwargs = {"ncells": (10, 10, 10), "oversample": 2, "wavelengths_A": [1.3]}
    if poly:
        axis = np.array([0.3, -0.5, 0.8]) / np.linalg.norm([0.3, -0.5, 0.8])
        k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
        ang = math.radians(0.05)
        kwargs |= {"wavelengths_A": 1.3 * np.array([0.999, 1.0, 1.001]), "weights": [0.25, 0.5, 0.25],
                   "mosaic_umats": [np.eye(3), np.eye(3) + math.sin(ang) * k + (1 - math.cos(ang)) * k @ k]}
    still = _still(A, **kwargs)
    img = simulate_still(still, det, sf_table)
    truth = truth_reflections(still, det, sf_table, image=img)
    errors = _isolated_centroid_errors(img, truth, det)
    assert len(errors) >= 5
    assert np.abs(errors).max() <= 0.1, errors
    # spot photons are sums of image pixels: positive, and together no more than the image
    assert np.all(truth.photons >= 0) and truth.photons.sum() <= img.sum() * (1 + 1e-12)
    assert truth.photons.sum() > 0.8 * img.sum()
    # d spacing is consistent with the cell
    np.testing.assert_allclose(truth.d_A, 1 / np.linalg.norm(truth.hkl @ A.T, axis=1))


# ------------------------------------------------------------------------------------------------
# inputs
# ------------------------------------------------------------------------------------------------
def test_hkl_loader(tmp_path):
    path = tmp_path / "f.hkl"
    path.write_text("1 2 3 10.5\n-2 0 1 4\n0 0 0 100\n1 2 3 11.0\n")
    table = load_hkl_text(path, default_F=2.0)
    assert table.hkl_min == (-2, 0, 0) and table.amplitudes.shape == (4, 3, 4)
    # (0, 1, 1) is unlisted inside the listed range: default_F, as nanoBragg fills its table
    np.testing.assert_allclose(table.lookup([[1, 2, 3], [-2, 0, 1], [0, 0, 0], [0, 1, 1], [5, 0, 0]]),
                               [11.0, 4.0, 100.0, 2.0, 2.0])
    with pytest.raises(ValueError, match="non-integer"):
        (tmp_path / "g.hkl").write_text("1.5 0 0 3\n")
        load_hkl_text(tmp_path / "g.hkl")


def test_default_F_applies_outside_table(nb_A):
    det = Panel.from_beam_center(100.0, (40, 40), 0.1, 80, 80)
    table = StructureFactorTable(np.zeros((1, 1, 1)), (0, 0, 0), default_F=3.0)
    still = _still(nb_A, wavelengths_A=[1.0], ncells=1, fluence_photons_per_m2=1 / R_E_SQ_M2)
    img = simulate_still(still, det, table)
    # N = 1: F_latt = 1, so every pixel (except hkl 000 at the beam) is 9 * Omega * P
    r = np.linalg.norm([3.95, 3.95, 100.0])  # centre of pixel (0, 0)
    assert img[0, 0] == pytest.approx(9.0 * 0.1 ** 2 / r ** 2 * 100.0 / r * 0.5 * (1 + (100.0 / r) ** 2), rel=1e-9)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ncells": (10, -1, 10)}, "Nb"),
        ({"ncells": (0, 10, 10)}, "Na"),
        ({"ncells": (10, 10, 2.5)}, "Nc"),
        ({"fluence_photons_per_m2": 0.0}, "fluence"),
        ({"wavelengths_A": [-1.0]}, "wavelengths_A"),
        ({"oversample": 0}, "oversample"),
        ({"shape": "cube"}, "shape"),
        ({"weights": [1.0, 2.0]}, "weights"),
        ({"max_memory_bytes": 1000}, "max_memory_bytes"),
    ],
)
def test_impossible_inputs_raise(kwargs, match, sf_table, nb_A):
    det = Panel.from_beam_center(100.0, (20, 20), 0.1, 40, 40)
    args = {"wavelengths_A": [1.0]} | kwargs
    call = {k: args.pop(k) for k in ("max_memory_bytes",) if k in args}
    with pytest.raises(ValueError, match=match):
        simulate_still(_still(nb_A, **args), det, sf_table, **call)


def test_detector_validation():
    with pytest.raises(ValueError, match="n_fast"):
        Panel.from_beam_center(100.0, (0, 0), 0.1, 0, 10)
    with pytest.raises(ValueError, match="pixel_size_mm"):
        Panel.from_beam_center(100.0, (0, 0), -0.1, 10, 10)
    with pytest.raises(ValueError, match="distance_mm"):
        Panel.from_beam_center(0.0, (0, 0), 0.1, 10, 10)
    with pytest.raises(ValueError, match="parallel"):
        Panel((0, 0, -100), (1, 0, 0), (1, 0, 0), 0.1, 10, 10)


def test_array_module_selection():
    assert get_array_module("numpy") is np
    assert get_array_module("auto") is not None
    with pytest.raises(ValueError, match="backend"):
        get_array_module("jax")


def test_full_eiger_frame_memory_is_bounded(sf_table):
    """A full Eiger 4M frame needs the image, a float32 bound and small batches, not pixels x samples."""
    import tracemalloc

    det = Panel.from_beam_center(250.0, (1035.0, 1083.5), 0.075, 2070, 2167)
    A = random_rotation(np.random.default_rng(11)) @ np.diag([1 / CELL[0], 1 / CELL[1], 1 / CELL[2]])
    tracemalloc.start()
    try:
        img = simulate_still(_still(A, wavelengths_A=[1.77, 1.775], ncells=10), det, sf_table)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert img.shape == (2167, 2070) and img.max() > 0
    assert peak < img.nbytes + 64 * 2**20, f"peak {peak / 2**20:.0f} MiB"


@pytest.mark.parametrize("shape", ["square", "gauss"])
def test_panel_candidates_give_every_panel_its_own_truth_table(shape, constructed_case, sf_table):
    """A multi-panel detector's truth, its panel-independent geometry computed once (panel_candidates), is each
    panel's own truth table to the bit, from far fewer candidates per panel."""
    from braggflow.detector import Detector
    from braggflow.simulator import panel_candidates

    A, whole, kwargs = constructed_case  # tilted, off-centre; 3 weighted sources, 3 domains, oversample 2
    still = _still(A, **dict(kwargs, shape=shape, oversample=1))
    # a 4 x 3 grid of 90 x 100 px tiles of the tilted panel, every other one turned about its normal by 2 deg
    panels = []
    for j in range(3):
        for i in range(4):
            tile = _window(whole, i * 90, j * 100, 90, 100)
            if (i + j) % 2:
                normal = np.cross(tile.fast_axis, tile.slow_axis)
                k = np.array([[0, -normal[2], normal[1]], [normal[2], 0, -normal[0]], [-normal[1], normal[0], 0]])
                rot = np.eye(3) + math.sin(math.radians(2)) * k + (1 - math.cos(math.radians(2))) * k @ k
                tile = Panel(tile.origin_mm, tuple(rot @ tile.fast_axis), tuple(rot @ tile.slow_axis),
                             tile.pixel_size_mm, tile.n_fast, tile.n_slow)
            panels.append(tile)
    det = Detector(tuple(panels))
    cands = panel_candidates(still, det, sf_table)
    rows = 0
    for panel, c in zip(det.panels, cands):
        image = simulate_still(still, panel, sf_table)
        own = truth_reflections(still, panel, sf_table, image=image)
        shared = truth_reflections(still, panel, sf_table, image=image, candidates=c)
        for field in ("hkl", "x_px", "y_px", "photons", "peak_fraction"):
            np.testing.assert_array_equal(getattr(shared, field), getattr(own, field))
        rows += len(own)
    assert rows > 20
    assert max(len(c) for c in cands) < 0.5 * len(np.unique(np.concatenate(cands), axis=0))


def test_the_image_pass_hands_its_nearest_nodes_to_the_truth_table(constructed_case, sf_table):
    """simulate_still(return_nodes=True) gives the same image and each pixel's nearest node of the reference
    sample; the truth table from them is the one it computes on its own, to the bit."""
    A, det, kwargs = constructed_case
    still = _still(A, **kwargs)
    image, nodes = simulate_still(still, det, sf_table, return_nodes=True)
    np.testing.assert_array_equal(image, simulate_still(still, det, sf_table))
    assert nodes.shape == (3, det.n_slow, det.n_fast) and nodes.dtype == np.int32
    own = truth_reflections(still, det, sf_table, image=image)
    handed = truth_reflections(still, det, sf_table, image=image, nodes=nodes)
    assert len(own) > 5
    for field in ("hkl", "x_px", "y_px", "photons", "peak_fraction"):
        np.testing.assert_array_equal(getattr(handed, field), getattr(own, field))
    with pytest.raises(ValueError, match="return_nodes"):
        simulate_still(still, det, sf_table, exhaustive=True, return_nodes=True)
