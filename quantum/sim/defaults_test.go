package sim

import (
	"testing"

	"qkdkms/quantum/finitekey"
)

// expectedRate evaluates the finite-key bound on the model's expected counts
// for a key block of nZ bits, with λ_EC = 1.1·n_Z·h(QBER).
func expectedRate(m Model, nZ float64) (float64, int64) {
	// pulses N so that the key block is nZ
	var zrate float64
	for k := range m.Intensities {
		zrate += m.IntensityProbs[k] * m.PZ * m.PZ * m.ExpectedGain(k)
	}
	N := nZ / zrate
	var p finitekey.Params
	copy(p.Mu[:], m.Intensities)
	copy(p.P[:], m.IntensityProbs)
	p.EpsSec, p.EpsCor = 1e-9, 1e-15
	var mz float64
	for k := range m.Intensities {
		g := N * m.IntensityProbs[k] * m.ExpectedGain(k)
		e := N * m.IntensityProbs[k] * m.ExpectedErrorProb(k)
		p.NZ[k] = uint64(g * m.PZ * m.PZ)
		p.NX[k] = uint64(g * (1 - m.PZ) * (1 - m.PZ))
		p.MX[k] = uint64(e * (1 - m.PZ) * (1 - m.PZ))
		p.MZ[k] = uint64(e * m.PZ * m.PZ)
		mz += e * m.PZ * m.PZ
	}
	p.LeakEC = 1.1 * nZ * finitekey.H2(mz/nZ)
	r, _ := finitekey.SecretLength(p)
	return float64(r.L) / N, r.L
}

// The default model must give a finite key (Lim et al. bound, expected
// counts, f = 1.1) from 0 to 100 km for key blocks of 10^5 to 10^7 bits.
func TestDefaultsGiveFiniteKey(t *testing.T) {
	for _, nz := range []float64{1e5, 1e6, 1e7} {
		for _, km := range []float64{0, 25, 50, 75, 100} {
			m := DefaultModel()
			m.FiberKm = km
			r, l := expectedRate(m, nz)
			if l <= 0 {
				t.Errorf("n_Z=%g at %g km: no key", nz, km)
			}
			if asym := finitekey.Asymptotic(m.Asymptotic(1.1)); r >= asym {
				t.Errorf("n_Z=%g at %g km: finite rate %.3g ≥ asymptotic %.3g", nz, km, r, asym)
			}
			t.Logf("n_Z=%g %3g km: ℓ=%d, %.3g bits/pulse (GLLP %.3g)", nz, km, l, r, finitekey.Asymptotic(m.Asymptotic(1.1)))
		}
	}
}
