package harness

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"qkdkms/quantum"
	"qkdkms/quantum/devstream"
	"qkdkms/quantum/etsi014"
	"qkdkms/quantum/sim"
)

// Drivers are the link drivers StartDevices knows.
var Drivers = []string{"sim", "devstream", "etsi014"}

// DeviceOptions configures StartDevices.
type DeviceOptions struct {
	// Driver is sim, devstream or etsi014.
	Driver string
	// Dir receives the devices' sockets and PKIs.
	Dir string
	// Sites are the two KME IDs; the one that sorts first plays Alice.
	Sites [2]string
	// FiberKm of the simulated fiber (sim; the devstream emulator's model
	// too). 0 = 1 km.
	FiberKm float64
	// FramePeriod of the devstream emulator (0 = 200 ms).
	FramePeriod time.Duration
	// StallTimeout is the devstream driver's stall_timeout (0 = its default).
	StallTimeout time.Duration
	// DeviceTimeout is the etsi014 driver's timeout per device call (0 =
	// its default).
	DeviceTimeout time.Duration
	Logger        *slog.Logger
}

// Devices are the QKD devices a two-site layout's links reach, run in this
// process: nothing for sim, a devstream emulator (Alice's and Bob's live
// streams on two Unix sockets; every node of a site reads its site's
// stream) or two emulated ETSI 014 key-delivery devices with their own PKIs
// (every node of a site is an SAE of its site's device).
type Devices struct {
	Driver string
	// Alice and Bob are the KME IDs of the sites that play each role.
	Alice, Bob string
	// Links are the links[] entries of each site (LinkSpec.Links).
	Links map[string][]PeerLink
	// Stream counts what the devstream emulator did (devstream).
	Stream *devstream.ServeStats
	// ETSI is the pair of key-delivery devices (etsi014): ETSI.A serves
	// the Alice site, ETSI.B the Bob site.
	ETSI *etsi014.Emulator

	gates  map[string]*gate // devstream: "alice", "bob"
	cancel context.CancelFunc
	done   chan error
}

// StartDevices starts the devices of o.Driver. Close stops them.
func StartDevices(o DeviceOptions) (*Devices, error) {
	if o.FiberKm == 0 {
		o.FiberKm = 1
	}
	if o.FramePeriod == 0 {
		o.FramePeriod = 200 * time.Millisecond
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(nopWriter{}, nil))
	}
	alice, bob := o.Sites[0], o.Sites[1]
	if bob < alice {
		alice, bob = bob, alice
	}
	d := &Devices{Driver: o.Driver, Alice: alice, Bob: bob, Links: map[string][]PeerLink{}}
	entries := func(aliceOpts, bobOpts any) error {
		ja, err := json.Marshal(aliceOpts)
		if err != nil {
			return err
		}
		jb, err := json.Marshal(bobOpts)
		if err != nil {
			return err
		}
		d.Links[alice] = []PeerLink{{Peer: bob, Driver: o.Driver, Options: ja}}
		d.Links[bob] = []PeerLink{{Peer: alice, Driver: o.Driver, Options: jb}}
		return nil
	}
	switch o.Driver {
	case "", "sim":
		d.Driver = "sim"
		opts := map[string]float64{"fiber_km": o.FiberKm}
		return d, entries(opts, opts)
	case "devstream":
		if err := os.MkdirAll(o.Dir, 0o755); err != nil {
			return nil, err
		}
		socks := map[string]string{}
		lns := map[string]net.Listener{}
		d.gates = map[string]*gate{}
		for _, role := range []string{"alice", "bob"} {
			socks[role] = filepath.Join(o.Dir, role+".sock")
			_ = os.Remove(socks[role]) // a socket left by an earlier run
			ln, err := devstream.Listen("unix:" + socks[role])
			if err != nil {
				for _, l := range lns {
					l.Close()
				}
				return nil, fmt.Errorf("devices: %w", err)
			}
			d.gates[role] = newGate()
			lns[role] = &gatedListener{Listener: ln, g: d.gates[role]}
		}
		m := sim.DefaultModel()
		m.FiberKm, m.DetectorEff = o.FiberKm, 0.5
		const pulses = 1_000_000
		m.PulseRate = pulses / o.FramePeriod.Seconds()
		ctx, cancel := context.WithCancel(context.Background())
		d.cancel, d.done, d.Stream = cancel, make(chan error, 1), new(devstream.ServeStats)
		go func() {
			d.done <- devstream.Serve(ctx, devstream.ServeOptions{Model: m, Seed: uint64(time.Now().UnixNano()), Pulses: pulses,
				Alice: lns["alice"], Bob: lns["bob"], Logger: o.Logger}, d.Stream)
		}()
		opts := func(role string) map[string]string {
			o2 := map[string]string{"source": "unix:" + socks[role]}
			if o.StallTimeout > 0 {
				o2["stall_timeout"] = o.StallTimeout.String()
			}
			return o2
		}
		return d, entries(opts("alice"), opts("bob"))
	case "etsi014":
		emu, err := etsi014.NewEmulator(etsi014.EmulatorConfig{Dir: o.Dir, MaxKeysPerRequest: 64, Log: o.Logger})
		if err != nil {
			return nil, fmt.Errorf("devices: %w", err)
		}
		d.ETSI = emu
		opts := func(dev *etsi014.Device) etsi014.Options {
			op := dev.Options()
			op.MaxKeysPerRequest = 64
			if o.DeviceTimeout > 0 {
				op.Timeout = quantum.Duration(o.DeviceTimeout)
			}
			return op
		}
		if err := entries(opts(emu.A), opts(emu.B)); err != nil {
			_ = emu.Close()
			return nil, err
		}
		return d, nil
	default:
		return nil, fmt.Errorf("devices: unknown link driver %q (have sim, devstream, etsi014)", o.Driver)
	}
}

// Close stops the devices.
func (d *Devices) Close() error {
	var err error
	if d.cancel != nil {
		for _, g := range d.gates {
			g.set(false)
		}
		d.cancel()
		err = <-d.done
		d.cancel = nil
	}
	if d.ETSI != nil {
		err = errors.Join(err, d.ETSI.Close())
	}
	return err
}

// PauseStream stalls the devstream emulator's stream of role ("alice" or
// "bob") for every client: its writes block, as a device whose
// acquisition hangs, until ResumeStream. The emulator keeps numbering
// frames meanwhile (and drops those a client's queue cannot hold).
func (d *Devices) PauseStream(role string) error {
	g, ok := d.gates[role]
	if !ok {
		return fmt.Errorf("devices: no %q stream (driver %s)", role, d.Driver)
	}
	g.set(true)
	return nil
}

// ResumeStream lets a paused stream flow again.
func (d *Devices) ResumeStream(role string) error {
	g, ok := d.gates[role]
	if !ok {
		return fmt.Errorf("devices: no %q stream (driver %s)", role, d.Driver)
	}
	g.set(false)
	return nil
}

// gate blocks writes while closed.
type gate struct {
	mu     sync.Mutex
	paused bool
	open   chan struct{} // closed while not paused
}

func newGate() *gate {
	ch := make(chan struct{})
	close(ch)
	return &gate{open: ch}
}

func (g *gate) set(paused bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if paused == g.paused {
		return
	}
	g.paused = paused
	if paused {
		g.open = make(chan struct{})
	} else {
		close(g.open)
	}
}

func (g *gate) wait(closed <-chan struct{}) bool {
	g.mu.Lock()
	ch := g.open
	g.mu.Unlock()
	select {
	case <-ch:
		return true
	case <-closed:
		return false
	}
}

type gatedListener struct {
	net.Listener
	g *gate
}

func (l *gatedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &gatedConn{Conn: c, g: l.g, closed: make(chan struct{})}, nil
}

// gatedConn is a stream client's connection whose writes wait while the
// gate is paused (a Close releases them).
type gatedConn struct {
	net.Conn
	g      *gate
	once   sync.Once
	closed chan struct{}
}

func (c *gatedConn) Write(p []byte) (int, error) {
	if !c.g.wait(c.closed) {
		return 0, net.ErrClosed
	}
	return c.Conn.Write(p)
}

func (c *gatedConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

type nopWriter struct{}

func (nopWriter) Write(p []byte) (int, error) { return len(p), nil }
