"""PET: activity concentration (Bq/mL) to SUV body weight from the DICOM header."""

from __future__ import annotations

import datetime as _dt
import logging
from typing import Iterable, Sequence

from ..errors import InvalidInputError
from ._headers import _tag

logger = logging.getLogger(__name__)


def _datetime(date, time, *, what: str) -> _dt.datetime | None:
    """DA + TM strings -> datetime (None when either is empty)."""
    date = str(date or "").strip()
    time = str(time or "").strip()
    if not date or not time:
        return None
    return _parse_dt(date + time, what=what)


def _parse_dt(value: str, *, what: str) -> _dt.datetime:
    value = str(value).strip()
    for sign in ("+", "-"):  # drop a UTC offset suffix (&ZZXX)
        if sign in value[8:]:
            value = value[: 8 + value[8:].index(sign)]
    main, _, frac = value.partition(".")
    if len(main) < 10 or not main.isdigit():
        raise InvalidInputError(f"{what}: cannot read the date/time {value!r}.")
    main = main.ljust(14, "0")
    try:
        stamp = _dt.datetime.strptime(main[:14], "%Y%m%d%H%M%S")
    except ValueError:
        raise InvalidInputError(f"{what}: cannot read the date/time {value!r}.") from None
    if frac:
        stamp += _dt.timedelta(seconds=float("0." + frac))
    return stamp


def suv_factor(ds, *, acquisition_times: Sequence[_dt.datetime] | None = None, source: str = "") -> float:
    """Factor turning PET activity concentration (Bq/mL) into SUV body weight (g/mL).

    ``SUVbw = C * weight / decayed_dose`` with ``weight`` in g and the injected dose decayed from
    the injection time to the scan start: ``decayed_dose = dose * 2 ** (-(t_scan - t_inj) / T_half)``
    (QIBA / DICOM vendor-neutral SUV definition, decay correction ``START``). With decay correction
    ``ADMIN`` the dose is not decayed. Pixel values must already be rescaled to Bq/mL.

    Parameters
    ----------
    ds : pydicom.Dataset
        Header of one PET image of the series.
    acquisition_times : sequence of datetime, optional
        AcquisitionDate/Time of all slices; the scan start falls back to the earliest of them when
        the SeriesTime is later than the acquisition (series re-saved after the scan).
    source : str, optional
        Name of the file, used in error messages.

    Returns
    -------
    factor : float
        Multiply Bq/mL by this to get SUVbw; 1.0 when ``Units`` is already ``GML``.

    Raises
    ------
    InvalidInputError
        Naming the missing or unusable tag: Units (0054,1001), DecayCorrection (0054,1102),
        CorrectedImage (0028,0051), PatientWeight (0010,1030),
        RadiopharmaceuticalInformationSequence (0054,0016), RadionuclideTotalDose (0018,1074),
        RadionuclideHalfLife (0018,1075), RadiopharmaceuticalStartDateTime (0018,1078) /
        RadiopharmaceuticalStartTime (0018,1072), SeriesDate (0008,0021) / SeriesTime (0008,0031).
    """
    where = source or "PET header"

    def missing(keyword: str, why: str) -> InvalidInputError:
        return InvalidInputError(
            f"{where}: cannot convert PET to SUV (body weight): {_tag(keyword)} is {why}."
        )

    if str(ds.get("Modality", "")).upper() != "PT":
        raise InvalidInputError(
            f"{where}: SUV needs a PET series, but {_tag('Modality')} is {ds.get('Modality')!r}."
        )
    units = str(ds.get("Units", "") or "").strip().upper()
    if not units:
        raise missing("Units", "missing")
    if units == "GML":
        return 1.0
    if units != "BQML":
        raise missing("Units", f"{units!r}; only BQML (Bq/mL) or GML (already SUV) can be used")
    corrected = [str(v).upper() for v in (ds.get("CorrectedImage") or [])]
    if "DECY" not in corrected:
        raise missing("CorrectedImage", f"{corrected or 'missing'} (no DECY: the image is not decay corrected)")
    decay = str(ds.get("DecayCorrection", "") or "").strip().upper()
    if decay not in ("START", "ADMIN"):
        raise missing("DecayCorrection", f"{decay or 'missing'!r}; START or ADMIN is needed")
    weight = ds.get("PatientWeight")
    try:
        weight_kg = float(weight)
    except (TypeError, ValueError):
        raise missing("PatientWeight", "missing" if weight in (None, "") else f"{weight!r}") from None
    if not weight_kg > 0:
        raise missing("PatientWeight", f"{weight_kg} kg (must be positive)")
    seq = ds.get("RadiopharmaceuticalInformationSequence")
    if not seq:
        raise missing("RadiopharmaceuticalInformationSequence", "missing")
    rp = seq[0]
    try:
        dose = float(rp.get("RadionuclideTotalDose"))
    except (TypeError, ValueError):
        raise missing("RadionuclideTotalDose", "missing") from None
    if not dose > 0:
        raise missing("RadionuclideTotalDose", f"{dose} Bq (must be positive)")
    try:
        half_life = float(rp.get("RadionuclideHalfLife"))
    except (TypeError, ValueError):
        raise missing("RadionuclideHalfLife", "missing") from None
    if not half_life > 0:
        raise missing("RadionuclideHalfLife", f"{half_life} s (must be positive)")
    if decay == "ADMIN":
        return weight_kg * 1000.0 / dose
    scan = _datetime(ds.get("SeriesDate"), ds.get("SeriesTime"), what=f"{where} SeriesDate/SeriesTime")
    if scan is None:
        keyword = "SeriesDate" if not ds.get("SeriesDate") else "SeriesTime"
        raise missing(keyword, "missing (needed for the scan start time)")
    if acquisition_times:
        earliest = min(acquisition_times)
        if earliest < scan:
            logger.info("%s: SeriesTime after the earliest AcquisitionTime; using %s", where, earliest)
            scan = earliest
    if rp.get("RadiopharmaceuticalStartDateTime"):
        injected = _parse_dt(rp.RadiopharmaceuticalStartDateTime,
                             what=f"{where} {_tag('RadiopharmaceuticalStartDateTime')}")
    elif rp.get("RadiopharmaceuticalStartTime"):
        injected = _datetime(ds.get("SeriesDate"), rp.RadiopharmaceuticalStartTime,
                             what=f"{where} {_tag('RadiopharmaceuticalStartTime')}")
        if injected > scan:  # injected the day before the scan
            injected -= _dt.timedelta(days=1)
    else:
        raise missing("RadiopharmaceuticalStartDateTime", "missing, and so is RadiopharmaceuticalStartTime (0018,1072)")
    elapsed = (scan - injected).total_seconds()
    if elapsed < 0:
        raise InvalidInputError(
            f"{where}: cannot convert PET to SUV: the injection ({injected}) is after the scan "
            f"start ({scan}); check {_tag('RadiopharmaceuticalStartDateTime')} and SeriesTime (0008,0031)."
        )
    decayed = dose * 2.0 ** (-elapsed / half_life)
    return weight_kg * 1000.0 / decayed


def _acquisition_times(datasets: Iterable) -> list[_dt.datetime]:
    out = []
    for ds in datasets:
        try:
            t = _datetime(ds.get("AcquisitionDate"), ds.get("AcquisitionTime"), what="AcquisitionTime")
        except InvalidInputError:
            t = None
        if t is not None:
            out.append(t)
    return out
