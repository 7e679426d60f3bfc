package finitekey

import (
	"errors"
	"math"
	"testing"
)

// Published parameter sets, turned into expected counts and evaluated by
// hand (an independent 40-digit mpmath evaluation of Lim et al. Eqs. (1)-(5)
// written from the paper, not from this package). The counts are the
// expected values of the system model, rounded to integers.
//
// Set A — Lim et al., PRA 89, 022307 (2014), §IV dedicated-fiber model:
// η_Bob = 0.10, p_dc = 6e-7, p_ap = 4e-2, e_mis = 5e-3, 0.2 dB/km, μ3 = 2e-4,
// f_EC = 1.16, ε_cor = 1e-15. Free parameters (the paper optimises them;
// here fixed): L = 50 km, μ1 = 0.5, μ2 = 0.1, p = (0.7, 0.2, 0.1),
// key-basis probability q = 0.9, N = 1e10 pulses, ε_sec = 1e-9.
//
//	η = 0.1·10^(−0.2·50/10) = 0.01
//	D_k = 1 − (1 − 2p_dc) e^{−η μk}   = 4.98871e-3, 1.00070e-3, 3.20000e-6
//	R_k = D_k (1 + p_ap);  e_k = p_dc + e_mis(1 − e^{−ημk}) + p_ap D_k/2
//	QBER_k = e_k/R_k                  = 2.4153%, 2.4609%, 20.25%
//	n_Z,k = N p_k q² R_k, n_X,k = N p_k (1−q)² R_k, m = N p_k q_b² e_k
//	λ_EC = 1.16 · n_Z · h(m_Z/n_Z) = 1.16 · 31106128 · h(0.0241931) = 5931229
//	δ_Z = sqrt(n_Z/2 · ln(21/ε_sec)) = 19226.594
//	n+_Z,k = e^{μk}/p_k (n_Z,k + δ_Z) = 69332687.76, 9422712.635, 219269.79
//	n−_Z,k = e^{μk}/p_k (n_Z,k − δ_Z) = 69242118.35, 9210225.906, −165339.0
//	τ0 = 0.7055189474, τ1 = 0.2304024753
//	s_Z,0 = τ0 (μ2 n−_Z,3 − μ3 n+_Z,2)/(μ2 − μ3) < 0 → 0
//	s_Z,1 = 17951914.13,  s_X,1 = 135993.763,  v_X,1 = 18281.895
//	γ = 0.0082437565,  φ_Z = v/s + γ = 0.1426756177
//	ℓ = ⌊0 + 17951914.13 (1 − h(0.14268)) − 5931229 − 6 log2(21e9) − log2(2e15)⌋
//	  = ⌊1407196.817⌋ = 1407196   (rate 1.4e-4 per pulse; Lim et al. Fig. 1
//	    shows the optimised rate for n_X = 1e7 at 50 km in the same decade)
//
// Set B — GYS system (Gobby, Yuan, Shields, APL 84, 3762 (2004)) as tabulated
// by Ma, Qi, Zhao, Lo, PRA 72, 012326 (2005), Table I: α = 0.21 dB/km,
// e_d = 3.3%, Y0 = 1.7e-6, η_Bob = 0.045, f = 1.22. Fixed: L = 25 km,
// μ = (0.48, 0.1, 0) (0.48 is Ma et al.'s optimal signal), p = (0.8, 0.1, 0.1),
// symmetric BB84 (q = 1/2, so Z and X counts are equal), N = 1e10, ε_sec = 1e-10.
//
//	η = 0.045 · 10^(−0.525) = 0.0134342218
//	Q_k = Y0 + 1 − e^{−ημk} = 6.42938e-3, 1.34422e-3, 1.7e-6
//	E_k Q_k = Y0/2 + e_d (1 − e^{−ημk});  E_k = 3.3123%, 3.3591%, 50%
//	n_k = N p_k Q_k / 4,  m_k = N p_k E_k Q_k / 4
//	λ_EC = 1.22 · 13195240 · h(0.0331504) = 3379859
//	τ0 = 0.6855104552, τ1 = 0.2466611966, s_Z,0 → 0
//	s_Z,1 = s_X,1 = 7181934.545,  v_X,1 = 426478.501
//	γ = 0.0011370058,  φ_Z = 0.0605191261
//	ℓ = ⌊1435335.681⌋ = 1435335
//
// Set C — the GYS system at L = 100 km with a heavy vacuum decoy,
// p = (0.6, 0.1, 0.3), N = 1e11, ε_sec = 1e-10: here the vacuum bound of
// Eq. (2) is positive.
//
//	η = 3.57447706e-4; E = 3.7582%, 5.4202%, 50%
//	λ_EC = 1.22 · 2705263 · h(0.0403366) = 804752
//	τ0 = 0.7617537769, τ1 = 0.1872579910
//	s_Z,0 = 17296.0843,  s_Z,1 = s_X,1 = 1426546.109,  v_X,1 = 97341.731
//	γ = 0.0027720679,  φ_Z = 0.0710080195
//	ℓ = ⌊111456.442⌋ = 111456
func TestSecretLengthPublishedSets(t *testing.T) {
	type want struct {
		tau0, tau1, sz0, sz1, sx1, vx1, gamma, phi, raw float64
		l                                               int64
	}
	cases := []struct {
		name string
		p    Params
		w    want
	}{
		{
			name: "A/Lim2014-50km",
			p: Params{
				Mu: [K]float64{0.5, 0.1, 2e-4}, P: [K]float64{0.7, 0.2, 0.1},
				NZ: [K]uint64{29417454, 1685978, 2696}, NX: [K]uint64{363178, 20815, 33},
				MX: [K]uint64{8772, 512, 7}, MZ: [K]uint64{710518, 41491, 546},
				LeakEC: 5931229, EpsSec: 1e-9, EpsCor: 1e-15,
			},
			w: want{0.705518947405902, 0.230402475260541, 0, 17951914.1334544, 135993.763339579,
				18281.8947061696, 0.00824375654786819, 0.142675617665789, 1407196.81731426, 1407196},
		},
		{
			name: "B/GYS-25km",
			p: Params{
				Mu: [K]float64{0.48, 0.1, 0}, P: [K]float64{0.8, 0.1, 0.1},
				NZ: [K]uint64{12858760, 336055, 425}, NX: [K]uint64{12858760, 336055, 425},
				MX: [K]uint64{425927, 11288, 212}, MZ: [K]uint64{425927, 11288, 212},
				LeakEC: 3379859, EpsSec: 1e-10, EpsCor: 1e-15,
			},
			w: want{0.685510455248509, 0.246661196633918, 0, 7181934.54490802, 7181934.54490802,
				426478.50112106, 0.0011370058439633, 0.0605191261423769, 1435335.68092109, 1435335},
		},
		{
			name: "C/GYS-100km-vacuum",
			p: Params{
				Mu: [K]float64{0.48, 0.1, 0}, P: [K]float64{0.6, 0.1, 0.3},
				NZ: [K]uint64{2598903, 93610, 12750}, NX: [K]uint64{2598903, 93610, 12750},
				MX: [K]uint64{97672, 5074, 6375}, MZ: [K]uint64{97672, 5074, 6375},
				LeakEC: 804752, EpsSec: 1e-10, EpsCor: 1e-15,
			},
			w: want{0.76175377688728, 0.187257991020528, 17296.0842934617, 1426546.10890169, 1426546.10890169,
				97341.7312272481, 0.00277206792525916, 0.0710080195147891, 111456.44216883, 111456},
		},
	}
	// Tolerance: relative 1e-9 on every bound (float64 vs 40-digit
	// reference), and ℓ exact.
	const rel = 1e-9
	near := func(t *testing.T, what string, got, want float64) {
		t.Helper()
		if math.Abs(got-want) > rel*math.Max(1, math.Abs(want)) {
			t.Errorf("%s = %.12g, want %.12g", what, got, want)
		}
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r, err := SecretLength(c.p)
			if err != nil {
				t.Fatalf("SecretLength: %v", err)
			}
			near(t, "τ0", r.Tau0, c.w.tau0)
			near(t, "τ1", r.Tau1, c.w.tau1)
			near(t, "s_Z,0", r.SZ0, c.w.sz0)
			near(t, "s_Z,1", r.SZ1, c.w.sz1)
			near(t, "s_X,1", r.SX1, c.w.sx1)
			near(t, "v_X,1", r.VX1, c.w.vx1)
			near(t, "γ", r.Gamma, c.w.gamma)
			near(t, "φ_Z", r.PhiZ, c.w.phi)
			near(t, "raw ℓ", r.Raw, c.w.raw)
			if r.L != c.w.l {
				t.Errorf("ℓ = %d, want %d", r.L, c.w.l)
			}
			t.Logf("ℓ=%d s_Z1=%.0f φ_Z=%.5f QBER_Z=%.4f", r.L, r.SZ1, r.PhiZ, r.QBERZ)
		})
	}
}

func TestHoeffdingTermsSetA(t *testing.T) {
	p := Params{
		Mu: [K]float64{0.5, 0.1, 2e-4}, P: [K]float64{0.7, 0.2, 0.1},
		NZ: [K]uint64{29417454, 1685978, 2696}, NX: [K]uint64{363178, 20815, 33},
		MX: [K]uint64{8772, 512, 7}, LeakEC: 0, EpsSec: 1e-9, EpsCor: 1e-15,
	}
	r, _ := SecretLength(p)
	// Hand values (see TestSecretLengthPublishedSets, set A).
	wantPlus := [K]float64{69332687.763987, 9422712.63549244, 219269.793561198}
	wantMinus := [K]float64{69242118.3492774, 9210225.905661, -165339.008482726}
	for k := range K {
		if math.Abs(r.NZPlus[k]-wantPlus[k]) > 1e-6*math.Abs(wantPlus[k]) {
			t.Errorf("n+_Z,%d = %.6f, want %.6f", k+1, r.NZPlus[k], wantPlus[k])
		}
		if math.Abs(r.NZMinus[k]-wantMinus[k]) > 1e-6*math.Abs(wantMinus[k]) {
			t.Errorf("n−_Z,%d = %.6f, want %.6f", k+1, r.NZMinus[k], wantMinus[k])
		}
	}
}

func baseParams() Params {
	return Params{
		Mu: [K]float64{0.48, 0.1, 0}, P: [K]float64{0.8, 0.1, 0.1},
		NZ: [K]uint64{12858760, 336055, 425}, NX: [K]uint64{12858760, 336055, 425},
		MX: [K]uint64{425927, 11288, 212}, MZ: [K]uint64{425927, 11288, 212},
		LeakEC: 3379859, EpsSec: 1e-10, EpsCor: 1e-15,
	}
}

func TestMonotonicity(t *testing.T) {
	base, err := SecretLength(baseParams())
	if err != nil {
		t.Fatal(err)
	}
	t.Run("more test-basis errors, shorter key", func(t *testing.T) {
		prev := base.L
		for _, extra := range []uint64{1000, 10000, 50000, 100000} {
			p := baseParams()
			p.MX[0] += extra
			p.MX[1] += extra / 20
			r, err := SecretLength(p)
			if err != nil && !errors.Is(err, ErrNoKey) {
				t.Fatal(err)
			}
			if r.L > prev {
				t.Errorf("extra errors %d: ℓ = %d > %d", extra, r.L, prev)
			}
			prev = r.L
		}
		if prev >= base.L {
			t.Errorf("ℓ did not decrease at all: %d", prev)
		}
	})
	t.Run("more leakage, shorter key", func(t *testing.T) {
		prev := base.L
		for _, leak := range []float64{3.5e6, 3.8e6, 4.2e6, 4.7e6} {
			p := baseParams()
			p.LeakEC = leak
			r, err := SecretLength(p)
			if err != nil {
				t.Fatal(err)
			}
			if r.L >= prev {
				t.Errorf("leak %.0f: ℓ = %d ≥ %d", leak, r.L, prev)
			}
			if d := float64(base.L-r.L) - (leak - 3379859); math.Abs(d) > 1 {
				t.Errorf("leak %.0f: ℓ fell by %d, want exactly the extra leakage", leak, base.L-r.L)
			}
			prev = r.L
		}
	})
	t.Run("smaller eps_sec, shorter key", func(t *testing.T) {
		p := baseParams()
		p.EpsSec = 1e-20
		r, err := SecretLength(p)
		if err != nil {
			t.Fatal(err)
		}
		if r.L >= base.L {
			t.Errorf("ε_sec 1e-20: ℓ = %d ≥ %d", r.L, base.L)
		}
	})
	t.Run("more counts, longer key", func(t *testing.T) {
		p := baseParams()
		for k := range K {
			p.NZ[k] *= 4
			p.NX[k] *= 4
			p.MX[k] *= 4
			p.MZ[k] *= 4
		}
		p.LeakEC *= 4
		r, err := SecretLength(p)
		if err != nil {
			t.Fatal(err)
		}
		if r.L <= 4*base.L {
			t.Errorf("4× block: ℓ = %d, want > 4·%d (finite-size penalty shrinks)", r.L, base.L)
		}
	})
}

func TestNoKeyExplained(t *testing.T) {
	cases := []struct {
		name   string
		mutate func(*Params)
	}{
		{"leakage exceeds entropy", func(p *Params) { p.LeakEC = 1e8 }},
		{"intercept-resend level errors", func(p *Params) {
			for k := range K {
				p.MX[k] = p.NX[k] / 4
			}
		}},
		{"tiny block", func(p *Params) {
			p.NZ = [K]uint64{500, 20, 2}
			p.NX = [K]uint64{500, 20, 2}
			p.MX = [K]uint64{15, 1, 1}
			p.MZ = [K]uint64{15, 1, 1}
			p.LeakEC = 150
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := baseParams()
			c.mutate(&p)
			r, err := SecretLength(p)
			if !errors.Is(err, ErrNoKey) {
				t.Fatalf("err = %v, want ErrNoKey", err)
			}
			if r.L != 0 || r.Reason == "" {
				t.Fatalf("ℓ = %d, reason %q; want 0 with a reason", r.L, r.Reason)
			}
			t.Logf("reason: %s", r.Reason)
		})
	}
}

func TestInvalidParams(t *testing.T) {
	cases := []struct {
		name   string
		mutate func(*Params)
	}{
		{"mu1 <= mu2+mu3", func(p *Params) { p.Mu = [K]float64{0.1, 0.08, 0.05} }},
		{"mu2 <= mu3", func(p *Params) { p.Mu = [K]float64{0.5, 0.1, 0.1} }},
		{"probabilities", func(p *Params) { p.P = [K]float64{0.5, 0.2, 0.2} }},
		{"errors > counts", func(p *Params) { p.MX[1] = p.NX[1] + 1 }},
		{"eps", func(p *Params) { p.EpsSec = 0 }},
		{"negative leak", func(p *Params) { p.LeakEC = -1 }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := baseParams()
			c.mutate(&p)
			if _, err := SecretLength(p); !errors.Is(err, ErrInvalidParams) {
				t.Fatalf("err = %v, want ErrInvalidParams", err)
			}
		})
	}
}

func TestH2(t *testing.T) {
	cases := []struct{ x, want float64 }{
		{0, 0}, {1, 0}, {0.5, 1}, {0.11, 0.49991596}, {0.01, 0.080793136}, {0.25, 0.81127812},
	}
	for _, c := range cases {
		if got := H2(c.x); math.Abs(got-c.want) > 1e-7 {
			t.Errorf("H2(%v) = %.9f, want %.9f", c.x, got, c.want)
		}
	}
}

// GYS parameters (Ma et al. PRA 72, 012326 (2005), Table I), μ = 0.48,
// standard BB84 sifting 1/2. Hand values (mpmath, same formulas as the doc
// comment of Asymptotic): R(0) = 2.554578e-3, R(25) = 7.543935e-4,
// R(50) = 2.225953e-4, R(100) = 1.718437e-5, and the rate reaches zero at
// 142.01 km — Ma et al. report a maximal distance of ≈142 km for the
// infinite-decoy GLLP rate with these parameters.
func TestAsymptoticGYS(t *testing.T) {
	gys := func(L float64) AsymptoticParams {
		return AsymptoticParams{
			Eta: 0.045 * math.Pow(10, -0.21*L/10), Y0: 1.7e-6, Ed: 0.033, Mu: 0.48, F: 1.22, Q: 0.5,
		}
	}
	for _, c := range []struct{ L, want float64 }{
		{0, 2.554578345e-3}, {25, 7.543934886e-4}, {50, 2.225952525e-4}, {100, 1.718436902e-5}, {140, 2.464569991e-7},
	} {
		if got := Asymptotic(gys(c.L)); math.Abs(got-c.want) > 1e-6*c.want {
			t.Errorf("R(%v km) = %.10g, want %.10g", c.L, got, c.want)
		}
	}
	// Find the cut-off distance by bisection.
	lo, hi := 100.0, 200.0
	for range 60 {
		m := (lo + hi) / 2
		if Asymptotic(gys(m)) > 0 {
			lo = m
		} else {
			hi = m
		}
	}
	if lo < 141.5 || lo > 142.5 {
		t.Errorf("GLLP cut-off %.3f km, want ≈142 km (Ma et al. 2005)", lo)
	}
	t.Logf("GYS GLLP cut-off: %.3f km", lo)
	// Rate decreases with distance.
	prev := math.Inf(1)
	for L := 0.0; L <= 150; L += 10 {
		r := Asymptotic(gys(L))
		if r > prev {
			t.Errorf("rate rises at %v km", L)
		}
		prev = r
	}
}
