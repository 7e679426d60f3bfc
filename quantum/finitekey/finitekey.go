// Package finitekey computes the secret key length of decoy-state BB84 with
// finite statistics, following
//
//	C. C. W. Lim, M. Curty, N. Walenta, F. Xu, H. Zbinden,
//	"Concise security bounds for practical decoy-state quantum key
//	distribution", Phys. Rev. A 89, 022307 (2014), Eqs. (1)-(5).
//
// and the asymptotic (infinite-decoy) GLLP rate of
//
//	H.-K. Lo, X. Ma, K. Chen, Phys. Rev. Lett. 94, 230504 (2005);
//	D. Gottesman, H.-K. Lo, N. Lütkenhaus, J. Preskill,
//	Quantum Inf. Comput. 4, 325 (2004).
//
// Naming. Lim et al. extract the key from the X basis and test in Z. This
// package follows the project's convention instead: Z is the key basis,
// X the test basis. Every formula is the paper's with X and Z swapped:
//
//	s_{Z,0}, s_{Z,1}  vacuum and single-photon detections in the key (Z) block  (Eqs. 2, 3)
//	s_{X,1}           single-photon detections in the test (X) block            (Eq. 3)
//	v_{X,1}           bit errors among the X single-photon detections           (Eq. 4)
//	φ_Z               phase-error rate of the Z single-photon detections        (Eq. 5)
//	ℓ = ⌊s_{Z,0} + s_{Z,1}(1 − h(φ_Z)) − λ_EC − 6 log2(21/ε_sec) − log2(2/ε_cor)⌋  (Eq. 1)
//
// All intensity levels contribute to the key, as in the paper.
package finitekey

import (
	"errors"
	"fmt"
	"math"
)

// Number of intensity levels of the two-decoy protocol.
const K = 3

// ErrInvalidParams: the parameters violate the protocol's preconditions.
var ErrInvalidParams = errors.New("finitekey: invalid parameters")

// ErrNoKey: the bound yields no positive key length. SecretLength returns it
// wrapped with the reason, together with a fully populated Result (L = 0).
var ErrNoKey = errors.New("finitekey: no secret key")

// Params are the inputs of the finite-key bound. Index k = 0, 1, 2 stands for
// μ1 (signal), μ2 (decoy), μ3 (weak decoy or vacuum).
type Params struct {
	// Mu are the mean photon numbers μ1 > μ2 + μ3, μ2 > μ3 ≥ 0.
	Mu [K]float64
	// P are the probabilities with which Alice picks each intensity
	// (p_{μk} > 0, sum 1 within 1e-9).
	P [K]float64

	// NZ[k] is the number of sifted key-basis (Z) detections for
	// intensity k: n_{Z,k}. The key block is n_Z = Σ_k n_{Z,k} bits.
	NZ [K]uint64
	// NX[k] is the number of sifted test-basis (X) detections: n_{X,k}.
	NX [K]uint64
	// MX[k] is the number of bit errors among NX[k]: m_{X,k}.
	MX [K]uint64
	// MZ[k] is the number of bit errors among NZ[k] (observed or estimated):
	// m_{Z,k}. It does not enter ℓ (the error correction leakage λ_EC does);
	// it is reported as the key-basis QBER.
	MZ [K]uint64

	// LeakEC is λ_EC, the number of bits disclosed by error correction
	// (and any other step except the final verification hash).
	LeakEC float64
	// EpsSec is the secrecy parameter ε_sec (e.g. 1e-9).
	EpsSec float64
	// EpsCor is the correctness parameter ε_cor (e.g. 1e-15); the
	// verification hash discloses log2(2/ε_cor) bits, charged here.
	EpsCor float64
}

// Result carries ℓ and every intermediate bound, so callers can report and
// tests can check them.
type Result struct {
	L   int64   // ℓ, the secret key length (bits); 0 when no key
	Raw float64 // the expression inside ⌊·⌋ of Eq. (1), may be negative

	Tau0, Tau1 float64 // τ0, τ1: probability that Alice sends 0 / 1 photon

	NZPlus, NZMinus [K]float64 // n±_{Z,k} (Hoeffding-corrected, scaled by e^{μk}/p_k)
	NXPlus, NXMinus [K]float64 // n±_{X,k}
	MXPlus, MXMinus [K]float64 // m±_{X,k}

	SZ0 float64 // lower bound on vacuum detections in the key block s_{Z,0}
	SZ1 float64 // lower bound on single-photon detections in the key block s_{Z,1}
	SX0 float64 // lower bound on vacuum detections in the test block s_{X,0}
	SX1 float64 // lower bound on single-photon detections in the test block s_{X,1}
	VX1 float64 // upper bound on bit errors among X single-photon detections v_{X,1}

	PhiZ  float64 // upper bound on the single-photon phase-error rate φ_Z (capped at 0.5)
	Gamma float64 // the sampling term γ(ε_sec, v_{X,1}/s_{X,1}, s_{X,1}, s_{Z,1})

	QBERZ float64 // Σ m_{Z,k} / Σ n_{Z,k}
	QBERX float64 // Σ m_{X,k} / Σ n_{X,k}

	PenaltySec float64 // 6 log2(21/ε_sec)
	PenaltyCor float64 // log2(2/ε_cor)

	Reason string // why L = 0, empty otherwise
}

// H2 is the binary entropy h(x) = −x log2 x − (1−x) log2(1−x), with
// h(0) = h(1) = 0. Arguments outside [0,1] are clamped.
func H2(x float64) float64 {
	if x <= 0 || x >= 1 {
		return 0
	}
	return -x*math.Log2(x) - (1-x)*math.Log2(1-x)
}

// Validate checks the protocol preconditions of Lim et al. §II.
func (p Params) Validate() error {
	m1, m2, m3 := p.Mu[0], p.Mu[1], p.Mu[2]
	if !(m3 >= 0 && m2 > m3 && m1 > m2+m3) {
		return fmt.Errorf("%w: need μ1 > μ2+μ3 and μ2 > μ3 ≥ 0, got %v", ErrInvalidParams, p.Mu)
	}
	sum := 0.0
	for k, pk := range p.P {
		if !(pk > 0 && pk < 1) {
			return fmt.Errorf("%w: p_μ%d = %v not in (0,1)", ErrInvalidParams, k+1, pk)
		}
		sum += pk
	}
	if math.Abs(sum-1) > 1e-9 {
		return fmt.Errorf("%w: intensity probabilities sum to %v", ErrInvalidParams, sum)
	}
	for k := range K {
		if p.MX[k] > p.NX[k] {
			return fmt.Errorf("%w: m_X,%d = %d > n_X,%d = %d", ErrInvalidParams, k+1, p.MX[k], k+1, p.NX[k])
		}
		if p.MZ[k] > p.NZ[k] {
			return fmt.Errorf("%w: m_Z,%d = %d > n_Z,%d = %d", ErrInvalidParams, k+1, p.MZ[k], k+1, p.NZ[k])
		}
	}
	if !(p.EpsSec > 0 && p.EpsSec < 1) || !(p.EpsCor > 0 && p.EpsCor < 1) {
		return fmt.Errorf("%w: ε_sec = %v, ε_cor = %v must be in (0,1)", ErrInvalidParams, p.EpsSec, p.EpsCor)
	}
	if p.LeakEC < 0 || math.IsNaN(p.LeakEC) {
		return fmt.Errorf("%w: λ_EC = %v", ErrInvalidParams, p.LeakEC)
	}
	return nil
}

// tau returns τ_n = Σ_k p_k e^{−μk} μk^n / n!.
func tau(p Params, n int) float64 {
	t := 0.0
	fact := 1.0
	for i := 2; i <= n; i++ {
		fact *= float64(i)
	}
	for k := range K {
		t += p.P[k] * math.Exp(-p.Mu[k]) * math.Pow(p.Mu[k], float64(n)) / fact
	}
	return t
}

// hoeffding returns x±_k = e^{μk}/p_k (x_k ± sqrt(total/2 · ln(21/ε_sec))).
func hoeffding(p Params, x [K]uint64) (plus, minus [K]float64) {
	var total float64
	for _, v := range x {
		total += float64(v)
	}
	delta := math.Sqrt(total / 2 * math.Log(21/p.EpsSec))
	for k := range K {
		s := math.Exp(p.Mu[k]) / p.P[k]
		plus[k] = s * (float64(x[k]) + delta)
		minus[k] = s * (float64(x[k]) - delta)
	}
	return plus, minus
}

// vacuumBound is Eq. (2): s_0 ≥ τ0 (μ2 n−_{μ3} − μ3 n+_{μ2}) / (μ2 − μ3).
func vacuumBound(p Params, tau0 float64, plus, minus [K]float64) float64 {
	m2, m3 := p.Mu[1], p.Mu[2]
	return tau0 * (m2*minus[2] - m3*plus[1]) / (m2 - m3)
}

// singleBound is Eq. (3):
//
//	s_1 ≥ τ1 μ1 [n−_{μ2} − n+_{μ3} − (μ2²−μ3²)/μ1² (n+_{μ1} − s_0/τ0)] / [μ1(μ2−μ3) − μ2² + μ3²].
func singleBound(p Params, tau0, tau1, s0 float64, plus, minus [K]float64) float64 {
	m1, m2, m3 := p.Mu[0], p.Mu[1], p.Mu[2]
	num := minus[1] - plus[2] - (m2*m2-m3*m3)/(m1*m1)*(plus[0]-s0/tau0)
	den := m1*(m2-m3) - m2*m2 + m3*m3
	return tau1 * m1 * num / den
}

// Gamma is γ(a,b,c,d) of Eq. (5):
//
//	sqrt( (c+d)(1−b)b / (c d ln 2) · log2( (c+d)/(c d (1−b) b) · 21²/a² ) ).
//
// At b = 0 (no observed single-photon errors) the limit is 0.
func Gamma(a, b, c, d float64) float64 {
	if b <= 0 || b >= 1 || c <= 0 || d <= 0 {
		return 0
	}
	arg := (c + d) / (c * d * (1 - b) * b) * (21 * 21) / (a * a)
	if arg <= 1 {
		return 0
	}
	return math.Sqrt((c + d) * (1 - b) * b / (c * d * math.Ln2) * math.Log2(arg))
}

// SecretLength evaluates Eqs. (1)-(5) of Lim et al. (2014) with Z as the key
// basis. When the bound gives no key, it returns the populated Result with
// L = 0 and Reason set, and an error wrapping ErrNoKey. Invalid parameters
// give ErrInvalidParams.
func SecretLength(p Params) (Result, error) {
	if err := p.Validate(); err != nil {
		return Result{}, err
	}
	var r Result
	r.Tau0, r.Tau1 = tau(p, 0), tau(p, 1)
	r.NZPlus, r.NZMinus = hoeffding(p, p.NZ)
	r.NXPlus, r.NXMinus = hoeffding(p, p.NX)
	r.MXPlus, r.MXMinus = hoeffding(p, p.MX)
	r.PenaltySec = 6 * math.Log2(21/p.EpsSec)
	r.PenaltyCor = math.Log2(2 / p.EpsCor)

	var nz, mz, nx, mx uint64
	for k := range K {
		nz += p.NZ[k]
		mz += p.MZ[k]
		nx += p.NX[k]
		mx += p.MX[k]
	}
	if nz > 0 {
		r.QBERZ = float64(mz) / float64(nz)
	}
	if nx > 0 {
		r.QBERX = float64(mx) / float64(nx)
	}

	// Vacuum bounds may come out negative with few counts; a count is ≥ 0.
	r.SZ0 = math.Max(0, vacuumBound(p, r.Tau0, r.NZPlus, r.NZMinus))
	r.SX0 = math.Max(0, vacuumBound(p, r.Tau0, r.NXPlus, r.NXMinus))
	r.SZ1 = math.Max(0, singleBound(p, r.Tau0, r.Tau1, r.SZ0, r.NZPlus, r.NZMinus))
	r.SX1 = math.Max(0, singleBound(p, r.Tau0, r.Tau1, r.SX0, r.NXPlus, r.NXMinus))
	// Eq. (4): v_{X,1} ≤ τ1 (m+_{X,μ2} − m−_{X,μ3}) / (μ2 − μ3).
	r.VX1 = math.Max(0, r.Tau1*(r.MXPlus[1]-r.MXMinus[2])/(p.Mu[1]-p.Mu[2]))

	// Eq. (5). Without single-photon test detections nothing bounds the
	// phase error: take the worst case φ = 1/2 (h = 1).
	r.PhiZ = 0.5
	if r.SX1 > 0 && r.SZ1 > 0 {
		b := math.Min(r.VX1/r.SX1, 1)
		r.Gamma = Gamma(p.EpsSec, b, r.SX1, r.SZ1)
		r.PhiZ = math.Min(0.5, b+r.Gamma)
	}

	r.Raw = r.SZ0 + r.SZ1*(1-H2(r.PhiZ)) - p.LeakEC - r.PenaltySec - r.PenaltyCor
	if r.Raw < 1 || math.IsNaN(r.Raw) {
		r.L = 0
		switch {
		case r.SZ1 == 0:
			r.Reason = "single-photon key detections s_Z,1 bound to zero (too few counts or decoy statistics inconsistent)"
		case r.PhiZ >= 0.5:
			r.Reason = fmt.Sprintf("single-photon phase error bound φ_Z ≥ 0.5 (test-basis QBER %.4f)", r.QBERX)
		default:
			r.Reason = fmt.Sprintf("entropy %.0f bits (s_Z,0 %.0f + s_Z,1 %.0f × (1 − h(φ_Z = %.4f))) does not cover λ_EC %.0f + %.0f bits of ε penalties",
				r.SZ0+r.SZ1*(1-H2(r.PhiZ)), r.SZ0, r.SZ1, r.PhiZ, p.LeakEC, r.PenaltySec+r.PenaltyCor)
		}
		return r, fmt.Errorf("%w: %s", ErrNoKey, r.Reason)
	}
	r.L = int64(math.Floor(r.Raw))
	return r, nil
}
