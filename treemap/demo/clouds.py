"""Clouds and cloud shadows: thresholded low-pass noise fields that drift between acquisitions."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np

from treemap.demo.layout import STREAM_CLOUDS, smooth_noise, stream
from treemap.demo.spec import WorldSpec, processing_baseline

#: Cloud top-of-canopy look: bright and nearly flat, a little bluer, darker in SWIR (times ``brightness``).
CLOUD_SHAPE = np.array((1.06, 1.04, 1.02, 1.01, 1.0, 1.0, 0.99, 0.99, 0.88, 0.80), dtype=np.float32)
RAMP = 0.5  # noise units from cloud edge to opaque core


@dataclass(frozen=True)
class DateClouds:
    cover: float  # target fraction of world pixels under cloud
    theta: float  # mix of the two drifting fields
    off_a: tuple[int, int]
    off_b: tuple[int, int]
    shadow: tuple[int, int]  # (rows, cols) from a cloud to its shadow
    darkness: float  # reflectance factor in full shadow
    brightness: float  # cloud reflectance level


def _pow2(n: int) -> int:
    return 1 << int(np.ceil(np.log2(max(n, 128))))


class CloudModel:
    def __init__(self, spec: WorldSpec, dates: list[dt.date]):
        rng = stream(spec.seed, STREAM_CLOUDS)
        self.h, self.w = spec.height_px, spec.width_px
        self.p, self.q = _pow2(2 * self.h), _pow2(2 * self.w)
        self.fields = []
        for _ in range(2):
            self.fields.append(smooth_noise(rng, (self.p, self.q), (40.0, 12.0, 4.0), (1.0, 0.9, 0.7),
                                            periodic=True))
        lat = 50.0
        params: list[DateClouds] = []
        pos_a = rng.integers(0, [self.p, self.q])
        pos_b = rng.integers(0, [self.p, self.q])
        theta = rng.uniform(0, 2 * np.pi)
        for day in dates:
            doy = day.timetuple().tm_yday
            winter = 0.5 * (1 + np.cos(2 * np.pi * (doy - 15) / 365.0))
            p_over, p_part = 0.09 + 0.15 * winter, 0.40
            u = rng.random()
            if u < p_over:
                cover = rng.uniform(0.8, 0.995)
            elif u < p_over + p_part:
                cover = rng.uniform(0.08, 0.65)
            else:
                cover = 0.0 if rng.random() < 0.5 else rng.uniform(0.0, 0.04)
            # clouds drift with a westerly wind and change shape (theta)
            pos_a = pos_a + np.array([rng.normal(-20, 40), rng.normal(-90, 40)]).astype(int)
            pos_b = pos_b + np.array([rng.normal(-10, 40), rng.normal(-60, 40)]).astype(int)
            theta += rng.normal(0, 0.6)
            # shadow: sun in the south-south-east about 11:30 local time, cloud base 0.6-1.5 km
            decl = 23.44 * np.sin(2 * np.pi * (284 + doy) / 365.0)
            zenith = np.radians(min(lat - decl + 4.0, 78.0))
            length = rng.uniform(600.0, 1500.0) * np.tan(zenith) / 10.0
            azimuth = np.radians(rng.uniform(335.0, 350.0))  # direction of the shadow from the cloud
            shadow = (int(round(-length * np.cos(azimuth))), int(round(length * np.sin(azimuth))))
            params.append(DateClouds(float(cover), float(theta), (int(pos_a[0]), int(pos_a[1])),
                                     (int(pos_b[0]), int(pos_b[1])), shadow, float(rng.uniform(0.3, 0.5)),
                                     float(rng.uniform(0.3, 0.5))))
        # at least one clear-ish scene under the old processing baseline, where there is one
        old = [i for i, d in enumerate(dates) if processing_baseline(spec, d) == "03.01"]
        if old and min(params[i].cover for i in old) > 0.3:
            i = old[0]
            params[i] = DateClouds(0.02, *[getattr(params[i], k) for k in
                                           ("theta", "off_a", "off_b", "shadow", "darkness", "brightness")])
        self.params = params

    def _field(self, k: int, drow: int = 0, dcol: int = 0) -> np.ndarray:
        c = self.params[k]
        rows = np.arange(self.h)
        cols = np.arange(self.w)
        fa = self.fields[0][np.ix_((rows + c.off_a[0] + drow) % self.p, (cols + c.off_a[1] + dcol) % self.q)]
        fb = self.fields[1][np.ix_((rows + c.off_b[0] + drow) % self.p, (cols + c.off_b[1] + dcol) % self.q)]
        return np.cos(c.theta) * fa + np.sin(c.theta) * fb

    def opacity_and_shadow(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Cloud opacity (0..1) and shadow strength (0..1) on the world grid for acquisition ``k``."""
        c = self.params[k]
        if c.cover <= 0.0:
            zero = np.zeros((self.h, self.w), dtype=np.float32)
            return zero, zero.copy()
        f = self._field(k)
        thr = np.quantile(f, 1.0 - c.cover)
        opacity = np.clip((f - thr) / RAMP, 0.0, 1.0).astype(np.float32)
        # the shadow at p is cast by the cloud at p - shadow
        fs = self._field(k, -c.shadow[0], -c.shadow[1])
        shade = np.clip(1.6 * (fs - thr) / RAMP, 0.0, 1.0).astype(np.float32)
        return opacity, shade
