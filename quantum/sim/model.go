// Package sim is a seeded simulator of a decoy-state BB84 quantum link: a
// Poisson source with signal and decoy intensities, a fiber with loss and
// misalignment, an optional intercept-resend eavesdropper, and a two-detector
// receiver with dark counts.
//
// # Structure
//
// The link has three stages, so that its two ends can run in two processes:
//
//   - Transmitter (Alice): picks bit, basis and intensity for every pulse
//     from a keyed pseudo-random function of (seed, frame, index), so that
//     nothing is stored per pulse and Choices is a lookup. Send emits the
//     frame's "photons in transit" (type Photon) onto a Link.
//   - Fiber (the channel in transit): misalignment and the eavesdropper act
//     on the photons as they cross the link. Attach it to either end of the
//     Link with Fiber.OnSend or Fiber.OnRecv; SetEve switches the
//     eavesdropper at run time.
//   - Receiver (Bob): chooses his basis per pulse (his own keyed PRF), adds
//     dark counts, measures with two detectors and squashes double clicks to a
//     random bit, and returns the detections.
//
// TransitFrame has a compact binary codec (MarshalBinary, WriteFrame,
// ReadFrame) so a Link can be a TCP connection (NewStreamLink); in one
// process NewLocalLink connects the halves with a Go channel, and New wires a
// complete in-process link.
//
// # Sampling
//
// Lost pulses are never visited. A pulse of intensity μ_k yields a photon
// that reaches Bob's detector and is registered with probability
// s_k = 1 − exp(−η μ_k), η = 10^(−αL/10)·η_det: a Poisson number of photons
// thinned by independent losses stays Poisson (the detector's inefficiency is
// treated as a beam splitter in front of an ideal detector, the standard
// model of GLLP and of Lo, Ma, Chen 2005). The transmitter walks the frame
// with geometric gaps at rate s_max = max_k s_k and keeps a candidate of
// intensity k with probability s_k/s_max; dark counts are sampled by the
// receiver with geometric gaps over all pulse indices. A pulse therefore
// clicks with probability Y_k = 1 − (1 − Y0) exp(−η μ_k), Y0 = 1 − (1 − p_dc)².
//
// Intensities are assigned by a keyed pseudo-random permutation of the frame
// onto multinomially drawn counts, so FrameStats.PerIntensity is exact and
// still costs nothing per pulse.
package sim

import (
	"errors"
	"fmt"
	"math"

	"qkdkms/quantum/finitekey"
)

// ErrInvalidModel: a Model parameter is out of range.
var ErrInvalidModel = errors.New("sim: invalid model")

// Model is the channel model. Every field has a unit and a default from the
// literature (DefaultModel).
type Model struct {
	// FiberKm is the fiber length L in km. Default 25 km.
	FiberKm float64
	// LossDBPerKm is the fiber attenuation α in dB/km. Default 0.2 dB/km,
	// standard single-mode fiber at 1550 nm (ITU-T G.652; the value used by
	// Lim et al., PRA 89, 022307 (2014), §IV).
	LossDBPerKm float64
	// DetectorEff is Bob's detection efficiency η_det (0..1], including
	// his optics. Default 0.10, InGaAs APDs as in Lim et al. (2014), §IV
	// (Gobby, Yuan, Shields, APL 84, 3762 (2004) report 0.045).
	DetectorEff float64
	// DarkCount is the dark-count probability per gate per detector p_dc
	// (Bob has two detectors). Default 6e-7, Lim et al. (2014), §IV;
	// GYS (2004) report Y0 = 1.7e-6 for the pair.
	DarkCount float64
	// Misalignment is e_d, the probability that a photon reaches the wrong
	// detector of the right basis (optical misalignment / phase drift).
	// Default 0.01, between Lim et al.'s 0.5% and GYS's 3.3%; 1–1.5% is the
	// usual simulation value (e.g. Xu, Curty, Qi, Lo, NJP 15, 113007 (2013)
	// use 1.5%).
	Misalignment float64
	// Intensities are the mean photon numbers per pulse, index 0 the signal
	// (μ1 > μ2 + μ3, μ2 > μ3 ≥ 0 for the finite-key bound). Default
	// 0.5, 0.25, 2e-4 (μ3 = 2e-4 as in Lim et al. (2014), §IV).
	Intensities []float64
	// IntensityProbs are the probabilities of each intensity (sum 1).
	// Default 0.3, 0.5, 0.2.
	IntensityProbs []float64
	// PZ is the probability that Alice (and, independently, Bob) picks the
	// key basis Z; the rest is the test basis X (efficient BB84: Lo, Chau,
	// Ardehali, J. Cryptology 18, 133 (2005)). Default 0.7.
	//
	// The defaults of Intensities, IntensityProbs and PZ come from a grid
	// search (as Lim et al. optimise theirs) maximising the finite-key rate
	// of Lim et al. at 25–100 km for key blocks of 10^5–10^7 bits: they give a
	// key at every distance of 0–100 km from n_Z = 10^5 on. The textbook
	// choice μ = (0.5, 0.1, 2e-4), p = (0.7, 0.2, 0.1), p_Z = 0.9 gives no
	// finite key below n_Z ≈ 10^7, because its X-basis decoy bins are too
	// small for the Hoeffding terms.
	PZ float64
	// PulseRate is the source repetition rate in Hz; it converts pulses to
	// seconds of simulated time. Default 1e9 Hz (1 GHz, e.g. Lucamarini et
	// al., Opt. Express 21, 24550 (2013); Boaron et al., PRL 121, 190502
	// (2018) run at 2.5 GHz).
	PulseRate float64
	// Eve is the fraction p (0..1) of pulses an intercept-resend
	// eavesdropper measures in a random basis and resends; it adds
	// p(1/4 − e_d/2) to the QBER (25% + e_d/2 at p = 1). Default 0. A Fiber
	// starts with this value; Fiber.SetEve changes it at run time.
	Eve float64
}

// DefaultModel returns the documented defaults.
func DefaultModel() Model {
	return Model{
		FiberKm:        25,
		LossDBPerKm:    0.2,
		DetectorEff:    0.10,
		DarkCount:      6e-7,
		Misalignment:   0.01,
		Intensities:    []float64{0.5, 0.25, 2e-4},
		IntensityProbs: []float64{0.3, 0.5, 0.2},
		PZ:             0.7,
		PulseRate:      1e9,
	}
}

// Validate checks ranges.
func (m Model) Validate() error {
	bad := func(f string, a ...any) error { return fmt.Errorf("%w: "+f, append([]any{ErrInvalidModel}, a...)...) }
	switch {
	case !(m.FiberKm >= 0):
		return bad("fiber length %v km", m.FiberKm)
	case !(m.LossDBPerKm >= 0):
		return bad("loss %v dB/km", m.LossDBPerKm)
	case !(m.DetectorEff > 0 && m.DetectorEff <= 1):
		return bad("detector efficiency %v", m.DetectorEff)
	case !(m.DarkCount >= 0 && m.DarkCount < 1):
		return bad("dark count probability %v", m.DarkCount)
	case !(m.Misalignment >= 0 && m.Misalignment <= 0.5):
		return bad("misalignment %v", m.Misalignment)
	case !(m.PZ > 0 && m.PZ < 1):
		return bad("p_Z %v must be in (0,1)", m.PZ)
	case !(m.PulseRate > 0):
		return bad("pulse rate %v Hz", m.PulseRate)
	case !(m.Eve >= 0 && m.Eve <= 1):
		return bad("eavesdropper fraction %v", m.Eve)
	case len(m.Intensities) == 0 || len(m.Intensities) > 4 || len(m.Intensities) != len(m.IntensityProbs):
		return bad("need 1..4 intensities with one probability each, got %d and %d", len(m.Intensities), len(m.IntensityProbs))
	}
	sum := 0.0
	for k, mu := range m.Intensities {
		if !(mu >= 0) || mu > 50 {
			return bad("intensity %d = %v", k, mu)
		}
		if !(m.IntensityProbs[k] > 0) {
			return bad("intensity probability %d = %v", k, m.IntensityProbs[k])
		}
		sum += m.IntensityProbs[k]
	}
	if math.Abs(sum-1) > 1e-9 {
		return bad("intensity probabilities sum to %v", sum)
	}
	return nil
}

// Transmittance is η = 10^(−αL/10) · η_det, the probability that one
// photon sent by Alice is registered by Bob.
func (m Model) Transmittance() float64 {
	return math.Pow(10, -m.LossDBPerKm*m.FiberKm/10) * m.DetectorEff
}

// Y0 is the background yield: the probability that at least one of Bob's two
// detectors fires from a dark count in a gate, 1 − (1 − p_dc)².
func (m Model) Y0() float64 {
	return 1 - (1-m.DarkCount)*(1-m.DarkCount)
}

// signalProb is s_k = 1 − exp(−η μ_k): a photon of pulse k is registered.
func (m Model) signalProb(k int) float64 {
	return -math.Expm1(-m.Transmittance() * m.Intensities[k])
}

// EffectiveMisalignment is e' = e_d (1 − p/2) + p/4: the probability that a
// registered photon of a pulse Bob measures in Alice's basis lands in the
// wrong detector, with the eavesdropper intercepting a fraction p.
func (m Model) EffectiveMisalignment() float64 {
	return m.Misalignment*(1-m.Eve/2) + m.Eve/4
}

// PulsesFor is the number of pulses after which the expected number of
// sifted key-basis (Z–Z) detections is block.
func (m Model) PulsesFor(block int) uint64 {
	var perPulse float64
	for k := range m.Intensities {
		perPulse += m.IntensityProbs[k] * m.ExpectedGain(k)
	}
	perPulse *= m.PZ * m.PZ
	return uint64(math.Ceil(float64(block) / perPulse))
}

// ExpectedGain is the probability Q_k that Bob registers a click (signal or
// dark, in either basis) for a pulse of intensity k:
// Q_k = 1 − (1 − Y0) exp(−η μ_k).
func (m Model) ExpectedGain(k int) float64 {
	s := m.signalProb(k)
	d := m.DarkCount
	return 1 - (1-s)*(1-d)*(1-d)
}

// ExpectedErrorProb is the probability, per pulse of intensity k that Bob
// measures in Alice's basis, of a click with the wrong bit:
//
//	s [e'(1 − p_dc) + p_dc/2] + (1 − s) [p_dc (1 − p_dc) + p_dc²/2]
//
// (a photon in the wrong detector and no dark count in the right one, or a
// dark count alone in the wrong detector, or any double click resolved to
// the wrong bit with probability 1/2).
func (m Model) ExpectedErrorProb(k int) float64 {
	s := m.signalProb(k)
	d := m.DarkCount
	e := m.EffectiveMisalignment()
	return s*(e*(1-d)+d/2) + (1-s)*(d*(1-d)+d*d/2)
}

// ExpectedQBER is the bit error rate of sifted detections of intensity k
// (Bob's basis equal to Alice's), E_k = ExpectedErrorProb(k)/ExpectedGain(k).
func (m Model) ExpectedQBER(k int) float64 {
	return m.ExpectedErrorProb(k) / m.ExpectedGain(k)
}

// ExpectedSinglePhotonFraction is the probability that a photon-caused
// click of intensity k came from a single-photon pulse:
// μ e^{−μ} η / (1 − e^{−ημ}).
func (m Model) ExpectedSinglePhotonFraction(k int) float64 {
	mu := m.Intensities[k]
	eta := m.Transmittance()
	s := m.signalProb(k)
	if s == 0 {
		return 0
	}
	return math.Min(1, mu*math.Exp(-mu)*eta/s)
}

// Asymptotic returns the parameters of the infinite-decoy GLLP rate for this
// model with error-correction inefficiency f (finitekey.Asymptotic): the
// signal intensity, η, Y0, the effective misalignment e' (eavesdropper
// included) and sifting factor p_Z² (key from Z-basis pulses only).
func (m Model) Asymptotic(f float64) finitekey.AsymptoticParams {
	return finitekey.AsymptoticParams{
		Eta: m.Transmittance(),
		Y0:  m.Y0(),
		Ed:  m.EffectiveMisalignment(),
		Mu:  m.Intensities[0],
		F:   f,
		Q:   m.PZ * m.PZ,
	}
}

// Seconds is the simulated time n pulses take at PulseRate.
func (m Model) Seconds(n uint64) float64 { return float64(n) / m.PulseRate }
