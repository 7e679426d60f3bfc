package finitekey

import "math"

// AsymptoticParams describe a channel for the asymptotic decoy-state rate.
type AsymptoticParams struct {
	// Eta is the overall transmittance η = η_fiber · η_detector (0..1].
	Eta float64
	// Y0 is the background yield: probability of a click with no photon
	// (dark counts of Bob's detectors per gate, all detectors together).
	Y0 float64
	// Ed is the probability that a photon-caused click lands in the wrong
	// detector (optical misalignment, plus any eavesdropper-induced error).
	Ed float64
	// Mu is the signal mean photon number μ.
	Mu float64
	// F is the error-correction inefficiency f ≥ 1 (leak = f·h(E)).
	F float64
	// Q is the sifting factor: fraction of pulses both parties measure in
	// the key basis (1/2 for standard BB84, p_Z² for the efficient variant).
	Q float64
}

// Asymptotic returns the GLLP secret key rate per pulse with an infinite
// number of decoy states (Lo, Ma, Chen, PRL 94, 230504 (2005), Eq. (1);
// Ma, Qi, Zhao, Lo, PRA 72, 012326 (2005), Eqs. (1)-(9)):
//
//	R = Q · { Q_1 [1 − h(e_1)] − f Q_μ h(E_μ) }
//	Q_μ   = 1 − (1 − Y0) e^{−ημ}
//	E_μ   = [ Y0/2 + e_d (1 − e^{−ημ}) ] / Q_μ
//	Y_1   = 1 − (1 − Y0)(1 − η),  Q_1 = Y_1 μ e^{−μ}
//	e_1   = [ Y0/2 + e_d η ] / Y_1
//
// Negative rates are returned as 0.
func Asymptotic(a AsymptoticParams) float64 {
	if a.Eta <= 0 || a.Mu <= 0 {
		return 0
	}
	sig := 1 - math.Exp(-a.Eta*a.Mu)
	qmu := 1 - (1-a.Y0)*math.Exp(-a.Eta*a.Mu)
	emu := (a.Y0/2 + a.Ed*sig) / qmu
	y1 := 1 - (1-a.Y0)*(1-a.Eta)
	q1 := y1 * a.Mu * math.Exp(-a.Mu)
	e1 := (a.Y0/2 + a.Ed*a.Eta) / y1
	if e1 >= 0.5 {
		return 0
	}
	r := a.Q * (q1*(1-H2(e1)) - a.F*qmu*H2(emu))
	if r < 0 || math.IsNaN(r) {
		return 0
	}
	return r
}
