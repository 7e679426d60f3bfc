package devstream

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"qkdkms/quantum/sim"
)

// RunCLI implements `qkdkms devstream record|dump|compare`: record the
// simulator into a pair of device streams, print a stream as text, or print
// the true QBER of a recorded pair. It returns the exit status.
func RunCLI(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	usage := func() {
		fmt.Fprint(stderr, `usage: qkdkms devstream COMMAND [flags]

  record -alice FILE -bob FILE [flags]  record the simulator as QKDS device streams
  dump [-n N] FILE                      print a QKDS stream as text
  compare ALICE BOB                     true sifted counts and QBER of a recorded pair
  serve -alice ADDR -bob ADDR [flags]   a device emulator: the simulator's live Alice
                                        and Bob streams at a set pulse rate

The format is described in quantum/devstream/FORMAT.md.
`)
	}
	if len(args) == 0 {
		usage()
		return 2
	}
	switch args[0] {
	case "record":
		return cliRecord(ctx, args[1:], stdout, stderr)
	case "serve":
		return cliServe(ctx, args[1:], stdout, stderr)
	case "dump":
		fs := flag.NewFlagSet("qkdkms devstream dump", flag.ContinueOnError)
		fs.SetOutput(stderr)
		n := fs.Int("n", 10, "pulse or detection lines per frame (-1: all)")
		if err := fs.Parse(args[1:]); err != nil {
			return flagStatus(err)
		}
		if fs.NArg() != 1 {
			fmt.Fprintln(stderr, "qkdkms devstream dump: want one FILE")
			return 2
		}
		f, err := os.Open(fs.Arg(0))
		if err != nil {
			fmt.Fprintf(stderr, "qkdkms devstream dump: %v\n", err)
			return 1
		}
		defer f.Close()
		if err := Dump(stdout, f, *n); err != nil {
			fmt.Fprintf(stderr, "qkdkms devstream dump: %v\n", err)
			return 1
		}
		return 0
	case "compare":
		if len(args) != 3 {
			fmt.Fprintln(stderr, "qkdkms devstream compare: want ALICE BOB")
			return 2
		}
		fa, err := os.Open(args[1])
		if err != nil {
			fmt.Fprintf(stderr, "qkdkms devstream compare: %v\n", err)
			return 1
		}
		defer fa.Close()
		fb, err := os.Open(args[2])
		if err != nil {
			fmt.Fprintf(stderr, "qkdkms devstream compare: %v\n", err)
			return 1
		}
		defer fb.Close()
		truth, err := Compare(fa, fb)
		printTruth(stdout, truth)
		if err != nil {
			fmt.Fprintf(stderr, "qkdkms devstream compare: %v\n", err)
			return 1
		}
		return 0
	case "-h", "-help", "--help", "help":
		usage()
		return 0
	}
	fmt.Fprintf(stderr, "qkdkms devstream: unknown command %q\n", args[0])
	usage()
	return 2
}

func flagStatus(err error) int {
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	return 2
}

func printTruth(w io.Writer, truth []Truth) {
	fmt.Fprintf(w, "%8s %12s %10s %8s %10s %8s %10s %8s\n", "frame", "pulses", "detections", "doubles", "n_Z", "QBER_Z", "n_X", "QBER_X")
	for _, t := range truth {
		fmt.Fprintf(w, "%8d %12d %10d %8d %10d %7.3f%% %10d %7.3f%%\n", t.Frame, t.Pulses, t.Detections, t.Doubles, t.SiftedZ, 100*t.QBERZ(), t.SiftedX, 100*t.QBERX())
	}
}

// modelFlags defines the simulator's model flags on fs (the style of
// `qkdkms sim`) and returns a function that builds the model after Parse.
func modelFlags(fs *flag.FlagSet, rateDefault float64) func() (sim.Model, error) {
	def := sim.DefaultModel()
	km := fs.Float64("km", def.FiberKm, "fiber length, km")
	loss := fs.Float64("loss", def.LossDBPerKm, "fiber loss, dB/km")
	detEff := fs.Float64("detector-eff", def.DetectorEff, "detector efficiency (0..1]")
	dark := fs.Float64("dark-count", def.DarkCount, "dark-count probability per gate per detector")
	misalign := fs.Float64("misalignment", def.Misalignment, "optical misalignment error e_d")
	eve := fs.Float64("eve", 0, "fraction of pulses an intercept-resend eavesdropper attacks")
	rate := fs.Float64("pulse-rate", rateDefault, "source pulse rate, Hz")
	return func() (sim.Model, error) {
		m := def
		m.FiberKm, m.LossDBPerKm, m.DetectorEff, m.DarkCount, m.Misalignment, m.Eve, m.PulseRate = *km, *loss, *detEff, *dark, *misalign, *eve, *rate
		return m, m.Validate()
	}
}

func cliRecord(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("qkdkms devstream record", flag.ContinueOnError)
	fs.SetOutput(stderr)
	alice := fs.String("alice", "", "Alice stream output file (required)")
	bob := fs.String("bob", "", "Bob stream output file (required)")
	frames := fs.Int("frames", 2, "frames to record")
	pulses := fs.Uint64("pulses", 500000, "pulses per frame")
	first := fs.Uint64("first-frame", 1, "number of the first frame")
	seed := fs.Uint64("seed", 1, "simulator seed")
	model := modelFlags(fs, sim.DefaultModel().PulseRate)
	device := fs.String("device", "", "device name in the headers (default \"qkdkms sim\")")
	if err := fs.Parse(args); err != nil {
		return flagStatus(err)
	}
	if *alice == "" || *bob == "" || fs.NArg() != 0 {
		fmt.Fprintln(stderr, "qkdkms devstream record: need -alice FILE and -bob FILE and no arguments")
		return 2
	}
	m, err := model()
	if err != nil {
		fmt.Fprintf(stderr, "qkdkms devstream record: %v\n", err)
		return 2
	}
	fa, err := os.Create(*alice)
	if err != nil {
		fmt.Fprintf(stderr, "qkdkms devstream record: %v\n", err)
		return 1
	}
	defer fa.Close()
	fb, err := os.Create(*bob)
	if err != nil {
		fmt.Fprintf(stderr, "qkdkms devstream record: %v\n", err)
		return 1
	}
	defer fb.Close()
	truth, err := Record(ctx, RecordOptions{Model: m, Seed: *seed, FirstFrame: *first, Frames: *frames, Pulses: *pulses, Device: *device}, fa, fb)
	if err == nil {
		err = errors.Join(fa.Close(), fb.Close())
	}
	if err != nil {
		fmt.Fprintf(stderr, "qkdkms devstream record: %v\n", err)
		return 1
	}
	printTruth(stdout, truth)
	return 0
}

// ServePulseRate is `qkdkms devstream serve`'s default pulse rate: the
// simulator makes about 5·10^6 pulses/s on one core, so the emulator keeps
// pace at this rate.
const ServePulseRate = 2e6

func cliServe(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("qkdkms devstream serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, `usage: qkdkms devstream serve -alice ADDR -bob ADDR [flags]

A QKD device emulator: runs the simulator and streams what Alice's and Bob's
devices would export, live, as QKDS streams (quantum/devstream/FORMAT.md),
to every client of the Alice and the Bob listener: a frame of -pulses pulses
every pulses/pulse-rate seconds, numbered by time since the start (frame k
at k·pulses/pulse-rate s). A client joins the stream where it is; a client
that falls -queue frames behind loses frames; when the simulation cannot keep
up with -pulse-rate (it makes about 5e6 pulses/s per core) frame numbers are
skipped. ADDR is tcp:HOST:PORT, unix:PATH or HOST:PORT. A site reads a
stream with the "devstream" link driver, e.g.
  {"driver": "devstream", "options": {"source": "tcp:127.0.0.1:7001"}}
on Alice's site (the KME ID that sorts first) and the Bob address on the
other. Runs until interrupted.

Flags:
`)
		fs.PrintDefaults()
	}
	aliceAddr := fs.String("alice", "", "listen address of Alice's stream (required)")
	bobAddr := fs.String("bob", "", "listen address of Bob's stream (required)")
	pulses := fs.Uint64("pulses", 500000, "pulses per frame")
	seed := fs.Uint64("seed", 1, "simulator seed")
	queue := fs.Int("queue", 64, "frames a client may fall behind before it loses frames")
	device := fs.String("device", "", "device name in the headers (default \"qkdkms devstream serve\")")
	model := modelFlags(fs, ServePulseRate)
	if err := fs.Parse(args); err != nil {
		return flagStatus(err)
	}
	if *aliceAddr == "" || *bobAddr == "" || fs.NArg() != 0 {
		fmt.Fprintln(stderr, "qkdkms devstream serve: need -alice ADDR and -bob ADDR and no arguments")
		return 2
	}
	m, err := model()
	if err != nil {
		fmt.Fprintf(stderr, "qkdkms devstream serve: %v\n", err)
		return 2
	}
	la, err := Listen(*aliceAddr)
	if err != nil {
		fmt.Fprintf(stderr, "qkdkms devstream serve: %v\n", err)
		return 1
	}
	lb, err := Listen(*bobAddr)
	if err != nil {
		la.Close()
		fmt.Fprintf(stderr, "qkdkms devstream serve: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "devstream serve: alice stream on %s:%s, bob stream on %s:%s; a frame of %d pulses every %v\n",
		la.Addr().Network(), la.Addr(), lb.Addr().Network(), lb.Addr(), *pulses, time.Duration(float64(*pulses)/m.PulseRate*float64(time.Second)))
	var st ServeStats
	err = Serve(ctx, ServeOptions{Model: m, Seed: *seed, Pulses: *pulses, Device: *device, Alice: la, Bob: lb, ClientQueue: *queue}, &st)
	fmt.Fprintf(stdout, "devstream serve: %d frames sent, %d skipped (simulation behind), %d dropped for slow clients\n", st.Frames.Load(), st.Late.Load(), st.Dropped.Load())
	if err != nil {
		fmt.Fprintf(stderr, "qkdkms devstream serve: %v\n", err)
		return 1
	}
	return 0
}

// Listen listens on an emulator address: tcp:HOST:PORT, unix:PATH or
// HOST:PORT.
func Listen(addr string) (net.Listener, error) {
	if !strings.HasPrefix(addr, "tcp:") && !strings.HasPrefix(addr, "unix:") {
		addr = "tcp:" + addr
	}
	src, err := parseSource(addr)
	if err != nil {
		return nil, err
	}
	l, err := net.Listen(src.scheme, src.addr)
	if err != nil {
		return nil, fmt.Errorf("devstream: %w", err)
	}
	return l, nil
}
