package sim

import (
	"errors"
	"fmt"
	"testing"

	"qkdkms/quantum"
	"qkdkms/quantum/finitekey"
)

// The simulator's statistics fed to the finite-key bound: a key at 25 km
// without Eve, at a rate below the asymptotic GLLP rate, and no key with a
// full intercept-resend attack.
func TestFiniteKeyOnSimulatedCounts(t *testing.T) {
	for _, c := range []struct {
		eve     float64
		wantKey bool
	}{{0, true}, {1, false}} {
		t.Run(fmt.Sprintf("eve=%g", c.eve), func(t *testing.T) {
			m := DefaultModel()
			m.FiberKm = 25
			m.Eve = c.eve
			s, err := New(m, 21)
			if err != nil {
				t.Fatal(err)
			}
			var p finitekey.Params
			copy(p.Mu[:], m.Intensities)
			copy(p.P[:], m.IntensityProbs)
			p.EpsSec, p.EpsCor = 1e-9, 1e-15
			const n = 4e8
			_, det, ch := runFrame(t, s, 1, n)
			for i, d := range det {
				a := ch[i]
				if a.Basis != d.Basis {
					continue
				}
				k := a.Intensity
				wrong := uint64(0)
				if a.Bit != d.Bit {
					wrong = 1
				}
				if d.Basis == quantum.BasisZ {
					p.NZ[k]++
					p.MZ[k] += wrong
				} else {
					p.NX[k]++
					p.MX[k] += wrong
				}
			}
			var nz, mz uint64
			for k := range finitekey.K {
				nz += p.NZ[k]
				mz += p.MZ[k]
			}
			q := float64(mz) / float64(nz)
			p.LeakEC = 1.16 * float64(nz) * finitekey.H2(q) // Lim et al.'s f_EC
			r, err := finitekey.SecretLength(p)
			asym := finitekey.Asymptotic(m.Asymptotic(1.16))
			t.Logf("n_Z=%d QBER=%.4f s_Z1=%.0f φ_Z=%.4f ℓ=%d rate %.3g/pulse (GLLP asymptotic %.3g) %v",
				nz, q, r.SZ1, r.PhiZ, r.L, float64(r.L)/n, asym, err)
			if c.wantKey {
				if err != nil || r.L <= 0 {
					t.Fatalf("no key at 25 km: %v", err)
				}
				if rate := float64(r.L) / n; rate >= asym {
					t.Errorf("finite-key rate %.3g ≥ asymptotic %.3g", rate, asym)
				}
			} else if !errors.Is(err, finitekey.ErrNoKey) || r.L != 0 {
				t.Fatalf("key under full intercept-resend: ℓ=%d err=%v", r.L, err)
			}
		})
	}
}
