package sim

// Sim is a complete in-process simulated link: Alice's transmitter, the
// fiber (with the eavesdropper switch) and Bob's receiver, connected by a
// LocalLink.
type Sim struct {
	Tx    *Transmitter
	Rx    *Receiver
	Fiber *Fiber
	Link  *LocalLink
}

// New wires an in-process link from model m. seed determines every random
// choice (Alice's, the fiber's and Bob's use independent streams derived
// from it). The link buffers up to 4 frames, so Send may run ahead of
// Receive.
func New(m Model, seed uint64) (*Sim, error) {
	fiber, err := NewFiber(m, seed)
	if err != nil {
		return nil, err
	}
	link := NewLocalLink(4)
	tx, err := NewTransmitter(m, seed, fiber.OnSend(link))
	if err != nil {
		return nil, err
	}
	rx, err := NewReceiver(m, seed, link)
	if err != nil {
		return nil, err
	}
	return &Sim{Tx: tx, Rx: rx, Fiber: fiber, Link: link}, nil
}

// SetEve switches the eavesdropper (fraction p of pulses) from the next
// frame on.
func (s *Sim) SetEve(p float64) error { return s.Fiber.SetEve(p) }

// Close takes the link down.
func (s *Sim) Close() error { return s.Link.Close() }
