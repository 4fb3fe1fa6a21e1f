"""Write the files of tests/test_romancal.py: a WFI level-1 exposure and every reference it calls for.

Run by ``.venv-romancal/bin/python tests/romancal_make.py ORDER.json`` (and ``--summary CAL CAT`` to read
the pipeline's outputs back as JSON; romancal and roman_datamodels
live only in that venv): ``ORDER.json`` says where to write what (``tests/romancal_context.py`` writes
it); each file is made with roman_datamodels' own ``create_fake_data`` and then given values the
pipeline's steps can calibrate with, so that the run is a real calibration, not a crash test.

Shapes: the exposure is the full detector, 4096 x 4096 pixels (and the 4096 x 128 ``amp33``), because
romancal 1.1.0 cannot calibrate less: ``DarkDecayStep`` subtracts ``frame_read_times()``, which is
always a 4096 x 4096 array, from every resultant (a smaller frame does not broadcast), and
``RefPixStep`` cuts the columns into 32 channels of 128. Four resultants: the fewest that ramp
fitting fits (stcal's likelihood fit, romancal's default, refuses fewer than 4). The references are
full-size too (the steps subtract, divide and index them against the frame) but compress to a few
kB: their arrays are constant, written zlib-compressed.
Only the exposure, which is never uploaded, holds noise and stars.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import asdf
import numpy as np
import roman_datamodels.datamodels as rdm
from astropy.io import fits
from astropy.modeling import models
from astropy.time import Time, TimeDelta

FRAME = 4096
SCIENCE = FRAME - 8  # the level-2 image: the frame without its 4-pixel reference border
COMPRESSION = {"all_array_compression": "zlib"}
ELEMENTS = ("F062", "F087", "F106", "F129", "F146", "F158", "F184", "F213")


def _meta(model: Any, reftype: str, detector: str, useafter: str) -> None:
    model.meta.reftype = reftype.upper()
    model.meta.instrument.name = "WFI"
    if "detector" in model.meta.instrument:
        model.meta.instrument.detector = detector
    model.meta.useafter = Time(useafter, format="iso", scale="utc")
    model.meta.pedigree = "DUMMY"
    model.meta.author = "crds-job tests/romancal_make.py"
    model.meta.description = f"A test {reftype} reference: constant, full-size, compressed"


def _fill(model: Any, **arrays: Any) -> Any:
    for name, value in arrays.items():
        setattr(model, name, value)
    return model


def reference(reftype: str, detector: str, element: str, exposure_type: str, useafter: str) -> Any:
    """A reference model of ``reftype`` for ``detector``, with values a calibration can use."""
    frame = (FRAME, FRAME)
    dq = np.zeros(frame, dtype=np.uint32)
    if reftype == "mask":
        model = _fill(rdm.MaskRefModel.create_fake_data(shape=frame), dq=dq)
    elif reftype == "saturation":
        model = _fill(rdm.SaturationRefModel.create_fake_data(shape=frame), dq=dq,
                      data=np.full(frame, 60000.0, dtype=np.float32))
    elif reftype == "refpix":
        # 32 channels; each channel's FFT of 4096 rows of 128 + 12 padding columns: 4096 * 140 / 2 + 1.
        zeros = np.zeros((32, FRAME * 140 // 2 + 1), dtype=np.complex128)
        model = _fill(rdm.RefpixRefModel.create_fake_data(), gamma=zeros, zeta=zeros.copy(), alpha=zeros.copy())
    elif reftype == "darkdecaysignal":
        model = rdm.DarkdecaysignalRefModel.create_fake_data()
        model.decay_table = {f"WFI{n:02d}": {"amplitude": 0.0, "time_constant": 20.0} for n in range(1, 19)}
    elif reftype in ("linearity", "inverselinearity"):
        coeffs = np.zeros((5, *frame), dtype=np.float32)
        coeffs[1] = 1.0  # the identity: counts are linear already
        cls = rdm.LinearityRefModel if reftype == "linearity" else rdm.InverselinearityRefModel
        model = _fill(cls.create_fake_data(shape=frame), coeffs=coeffs, dq=dq)
    elif reftype == "integralnonlinearity":
        model = rdm.IntegralnonlinearityRefModel.create_fake_data()
        # Per channel, a correction (none) for each DN value: a 2-point lookup spanning the 16-bit range.
        model.meta.n_channels = 32
        model.meta.n_pixels_per_channel = 2
        model.value = np.array([0, 65535], dtype=np.uint16)
        model.inl_table = {f"science_channel_{n:02d}": {"instrument_channel": n - 1, "correction": np.zeros(2)}
                           for n in range(1, 33)}
    elif reftype == "readnoise":
        model = _fill(rdm.ReadnoiseRefModel.create_fake_data(shape=frame), data=np.full(frame, 5.0, dtype=np.float32))
    elif reftype == "gain":
        model = _fill(rdm.GainRefModel.create_fake_data(shape=frame), data=np.full(frame, 2.0, dtype=np.float32))
    elif reftype == "dark":
        model = _fill(rdm.DarkRefModel.create_fake_data(shape=frame), dq=dq,
                      dark_slope=np.full(frame, 0.01, dtype=np.float32),
                      dark_slope_error=np.full(frame, 0.001, dtype=np.float32))
        model.meta.exposure.type = exposure_type
    elif reftype == "flat":
        science = (SCIENCE, SCIENCE)
        model = _fill(rdm.FlatRefModel.create_fake_data(shape=science), data=np.ones(science, dtype=np.float32),
                      err=np.full(science, 0.001, dtype=np.float32), dq=np.zeros(science, dtype=np.uint32))
    elif reftype == "distortion":
        # Detector pixels to V2/V3 arcsec: 0.11"/pixel about the centre, as the WFI's nominal plate scale.
        centre = (FRAME - 8) / 2
        model = rdm.DistortionRefModel.create_fake_data()
        transform = (models.Shift(-centre) & models.Shift(-centre)) | (models.Scale(0.11) & models.Scale(0.11))
        transform.bounding_box = ((-0.5, SCIENCE - 0.5), (-0.5, SCIENCE - 0.5))
        model.coordinate_distortion_transform = transform
    elif reftype == "photom":
        model = rdm.WfiImgPhotomRefModel.create_fake_data()
        wavelength = np.linspace(0.5, 2.5, 8, dtype=np.float32)
        model.phot_table = {
            name: {"photmjsr": 0.5, "uncertainty": 0.01, "pixelareasr": 2.8e-13, "collecting_area": 3.6,
                   "wavelength": wavelength, "effective_area": np.ones_like(wavelength)}
            for name in ELEMENTS
        }
    elif reftype == "apcorr":
        model = rdm.ApcorrRefModel.create_fake_data()
        fractions = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
        radii = np.array([0.5, 0.8, 1.0, 1.3, 1.6, 2.0, 2.6, 3.5, 5.5])
        model.data = {name: {"ap_corrections": 1 / fractions, "ee_fractions": fractions, "ee_radii": radii,
                             "sky_background_rin": 8.0, "sky_background_rout": 12.0} for name in ELEMENTS}
    elif reftype == "epsf":
        model = rdm.EpsfRefModel.create_fake_data()
        oversample, side = 4, 65
        y, x = np.mgrid[:side, :side] - side // 2
        sigma = 1.2 * oversample
        stamp = np.exp(-(x**2 + y**2) / (2 * sigma**2))
        stamp *= oversample**2 / stamp.sum()  # the new format: each stamp sums to oversample**2
        corners = [0.0, float(SCIENCE - 1)]
        positions = [(px, py) for py in corners for px in corners]
        model.psf = np.broadcast_to(stamp, (1, 2, len(positions), side, side)).astype(np.float32).copy()
        model.meta.oversample = oversample
        model.meta.pixel_x = [px for px, _ in positions]
        model.meta.pixel_y = [py for _, py in positions]
        model.meta.defocus = [0]
        model.meta.spectral_type = ["A0V", "G2V"]
        model.meta.jitter_major = 8.0
        model.meta.jitter_minor = 8.0
        model.meta.jitter_position_angle = 0.0
        model.meta.instrument.optical_element = element
    else:
        raise ValueError(f"no recipe for reference type {reftype!r}")
    _meta(model, reftype, detector, useafter)
    if "optical_element" in model.meta.instrument:
        model.meta.instrument.optical_element = element
    return model


def step_parameters(reftype: str, exposure_type: str, useafter: str) -> asdf.AsdfFile:
    """A ``pars-*`` reference as stpipe writes one (StepConfig with CRDS metadata): no parameter changed."""
    from romancal.pipeline import ExposurePipeline

    classes = {ExposurePipeline.get_config_reftype(): (ExposurePipeline, "exposure_pipeline"),
               **{step.get_config_reftype(): (step, alias) for alias, step in ExposurePipeline.step_defs.items()}}
    cls, alias = classes[reftype]
    tree = {
        "class": f"{cls.__module__}.{cls.__name__}", "name": alias, "parameters": {},
        "meta": {"author": "crds-job tests", "date": "2025-01-01T00:00:00",
                 "description": f"Parameters for calibration step {cls.__name__}",
                 "instrument": {"name": "WFI"}, "origin": "crds-job", "pedigree": "DUMMY",
                 "reftype": reftype.upper(), "telescope": "ROMAN", "useafter": useafter,
                 "exposure": {"type": exposure_type}},
    }
    return asdf.AsdfFile(tree)


def dust_map(path: str, pole: str, value: float) -> None:
    """A small SFD-style E(B-V) map of one galactic hemisphere: ZEA projection about the pole, as
    SFD_dust_4096_[ns]gp.fits (CRPIX at the centre, LAM_NSGP), 64 pixels instead of 4096."""
    side = 64
    scale = 0.0395 * 4096 / side  # SFD's 4096-pixel maps span the hemisphere at 0.0395 deg/pixel
    north = pole == "north"
    header = fits.Header()
    header["CTYPE1"], header["CTYPE2"] = "GLON-ZEA", "GLAT-ZEA"
    header["CRPIX1"] = header["CRPIX2"] = side / 2 + 0.5
    header["CRVAL1"], header["CRVAL2"] = 0.0, (90.0 if north else -90.0)
    header["CD1_1"], header["CD2_2"] = (-scale, -scale) if north else (scale, scale)
    header["CD1_2"] = header["CD2_1"] = 0.0
    header["LONPOLE"] = 180.0
    header["LAM_NSGP"] = 1 if north else -1
    header["BUNIT"] = "mag"
    fits.PrimaryHDU(np.full((side, side), value, dtype=np.float32), header=header).writeto(path, overwrite=True)


def exposure(path: str, header: dict[str, Any], seed: int = 0) -> None:
    """A level-1 WFI exposure: 4 resultants of the full frame, a sky, read noise and a few hundred stars."""
    rng = np.random.default_rng(seed)
    resultants = 4
    model = rdm.ScienceRawModel.create_fake_data(shape=(resultants, FRAME, FRAME))
    meta = model.meta
    meta.filename = path.rsplit("/", 1)[-1]
    meta.instrument.detector = header["detector"]
    meta.instrument.optical_element = header["optical_element"]
    meta.exposure.type = header["exposure_type"]
    meta.exposure.start_time = Time(header["start_time"], format="iso", scale="utc")
    meta.exposure.end_time = Time(header["start_time"], format="iso", scale="utc") + TimeDelta(10, format="sec")
    meta.exposure.read_pattern = [[n] for n in range(1, resultants + 1)]
    meta.exposure.nresultants = resultants
    meta.exposure.frame_time = 3.04
    meta.exposure.exposure_time = 3.04 * resultants
    meta.exposure.effective_exposure_time = 3.04 * resultants
    meta.exposure.ma_table_number = 4
    meta.exposure.ma_table_name = "crds-job test"
    for key, value in {"ra_ref": header["ra"], "dec_ref": header["dec"], "v2_ref": 0.0, "v3_ref": 0.0,
                       "roll_ref": 0.0, "vparity": -1, "v3yangle": -60.0, "s_region": ""}.items():
        if key in meta.wcsinfo or key in ("ra_ref", "dec_ref", "v2_ref", "v3_ref", "roll_ref", "vparity"):
            meta.wcsinfo[key] = value
    meta.velocity_aberration.scale_factor = 1.0
    meta.pointing.target_ra = header["ra"]
    meta.pointing.target_dec = header["dec"]

    rate = np.full((FRAME, FRAME), 2.0)  # DN/s of sky
    y, x = np.mgrid[-6:7, -6:7]
    star = np.exp(-(x**2 + y**2) / (2 * 1.2**2))
    for row, column in rng.integers(100, FRAME - 100, size=(300, 2)):
        rate[row - 6:row + 7, column - 6:column + 7] += rng.uniform(200, 2000) * star
    times = 3.04 * np.arange(1, resultants + 1)
    counts = 1000.0 + rate[None] * times[:, None, None] + rng.normal(0, 5.0, (resultants, FRAME, FRAME))
    model.data = np.clip(counts, 0, 65535).astype(np.uint16)
    model.amp33 = np.full((resultants, FRAME, 128), 1000, dtype=np.uint16)
    model.save(path)


def summary(calibrated: str, catalog: str) -> dict[str, Any]:
    """What the test checks of the pipeline's outputs, as JSON: the test's venv has not romancal's readers."""
    import pyarrow.parquet

    with rdm.open(calibrated) as model:
        ref_file = {key: value for key, value in model.meta.ref_file.items() if isinstance(value, str)}
        context = model.meta.ref_file.crds.context
        cal_step = {key: str(value) for key, value in model.meta.cal_step.items()}
    table = pyarrow.parquet.read_table(catalog)
    return {"ref_file": ref_file, "context": context, "cal_step": cal_step, "sources": table.num_rows,
            "dust_ebv": [None if value != value else float(value) for value in table.column("dust_ebv").to_pylist()]}


def main(order_path: str) -> None:
    with open(order_path) as handle:
        order = json.load(handle)
    for item in order["references"]:
        kind = item["reftype"]
        if kind == "dustmap":
            dust_map(item["path"], item["field"], item["value"])
        elif kind.startswith("pars-"):
            step_parameters(kind, item["exposure_type"], item["useafter"]).write_to(item["path"])
        else:
            model = reference(kind, item["detector"], item["optical_element"], item["exposure_type"], item["useafter"])
            model.save(item["path"], **COMPRESSION)
    exposure(order["exposure"]["path"], order["exposure"])


if __name__ == "__main__":
    if sys.argv[1] == "--summary":
        print(json.dumps(summary(sys.argv[2], sys.argv[3])))
    else:
        main(sys.argv[1])
