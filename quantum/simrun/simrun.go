// Package simrun implements `qkdkms sim`: it runs complete BB84 sessions
// (quantum/session over the quantum/sim link and an in-process classical
// channel) standalone, over a grid of fiber lengths and key block sizes, and
// prints what each produced next to the asymptotic decoy-state rate.
package simrun

import (
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"

	"qkdkms/plugins/host"
	"qkdkms/plugins/pluginbuild"
	"qkdkms/plugins/steps"
	"qkdkms/quantum"
	"qkdkms/quantum/finitekey"
	"qkdkms/quantum/session"
	"qkdkms/quantum/sim"
)

// Options are the settings of a run.
type Options struct {
	Distances []float64 // fiber lengths, km
	Blocks    []int     // target key blocks: sifted key-basis bits per session
	Sessions  int       // sessions per (distance, block)
	Model     sim.Model // channel model; FiberKm is overridden per row
	Seed      uint64    // seeds the link and the sessions' randomness
	TagBits   int       // verification tag bits (ε_cor = 2^-t)
	EpsSec    float64
	Timeout   time.Duration // per session
	Runner    host.Runner   // step plugins (native or WASM)
	Progress  io.Writer     // progress bar destination; nil: none
}

// Run runs the grid and returns one row per (distance, block).
func Run(ctx context.Context, o Options) ([]Row, error) {
	if o.Sessions < 1 {
		o.Sessions = 1
	}
	total := len(o.Distances) * len(o.Blocks) * o.Sessions
	var bar *progressbar.ProgressBar
	if o.Progress != nil {
		bar = progressbar.NewOptions(total,
			progressbar.OptionSetWriter(o.Progress),
			progressbar.OptionSetDescription("sessions"),
			progressbar.OptionShowCount(),
			progressbar.OptionSetWidth(30),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionClearOnFinish(),
		)
		defer bar.Exit()
	}
	var rows []Row
	for _, km := range o.Distances {
		for _, block := range o.Blocks {
			m := o.Model
			m.FiberKm = km
			if bar != nil {
				bar.Describe(fmt.Sprintf("%g km, block %d", km, block))
			}
			row, err := runPoint(ctx, o, m, block, func() {
				if bar != nil {
					_ = bar.Add(1)
				}
			})
			if err != nil {
				return rows, err
			}
			rows = append(rows, row)
		}
	}
	if bar != nil {
		_ = bar.Finish()
	}
	return rows, nil
}

func partyRand(seed uint64, label string, session int) io.Reader {
	var k [32]byte
	binary.LittleEndian.PutUint64(k[:8], seed)
	binary.LittleEndian.PutUint64(k[8:16], uint64(session))
	copy(k[16:], label)
	return rand.NewChaCha8(k)
}

func runPoint(ctx context.Context, o Options, m sim.Model, block int, done func()) (Row, error) {
	row := Row{Km: m.FiberKm, Block: block, StepWall: make([]time.Duration, len(steps.Kinds))}
	start := time.Now()
	link, err := sim.New(m, o.Seed^math.Float64bits(m.FiberKm)^uint64(block)<<20)
	if err != nil {
		return row, err
	}
	defer link.Close()
	pulses := m.PulsesFor(block)
	var qErr, fSum float64
	var fN int
	for s := range o.Sessions {
		if err := ctx.Err(); err != nil {
			return row, err
		}
		ra, err := runSession(ctx, o, m, link, pulses, uint64(s+1))
		done()
		row.Sessions++
		row.Pulses += ra.Pulses
		row.SimSeconds += ra.LinkTime
		for _, st := range ra.Steps {
			for i, k := range steps.Kinds {
				if st.Kind == k {
					row.StepWall[i] += st.Wall
				}
			}
		}
		if err != nil {
			if !errors.Is(err, session.ErrAbort) {
				return row, err
			}
			row.Aborted++
			if row.Note == "" {
				row.Note = abortNote(err, ra)
			}
			continue
		}
		row.Sifted += uint64(ra.SiftedBits)
		row.Leaked += ra.LeakEC
		row.Final += uint64(ra.FinalBits)
		qErr += ra.QBERZ * float64(ra.SiftedBits)
		if f := ra.ReconEfficiency(); f > 0 {
			fSum += f
			fN++
		}
	}
	if row.Sifted > 0 {
		row.QBER = qErr / float64(row.Sifted)
	}
	if fN > 0 {
		row.F = fSum / float64(fN)
	}
	if row.Pulses > 0 {
		row.PerPulse = float64(row.Final) / float64(row.Pulses)
	}
	if row.SimSeconds > 0 {
		row.PerSecond = float64(row.Final) / row.SimSeconds
	}
	f := row.F
	if f == 0 {
		f = 1.16 // Lim et al. 2014's f_EC when no session measured one
	}
	row.GLLP = finitekey.Asymptotic(m.Asymptotic(f))
	row.Wall = time.Since(start)
	return row, nil
}

func abortNote(err error, r session.Result) string {
	switch {
	case errors.Is(err, session.ErrNoKey):
		return fmt.Sprintf("no key (QBER_X %.1f%%)", 100*r.QBERX)
	case errors.Is(err, session.ErrVerify):
		return "verification failed"
	}
	s := err.Error()
	if len(s) > 60 {
		s = s[:60] + "…"
	}
	return s
}

// runSession runs Alice and Bob of one session over a fresh in-process
// classical channel and returns Alice's result (Bob's must agree).
func runSession(ctx context.Context, o Options, m sim.Model, link *sim.Sim, pulses, frame uint64) (session.Result, error) {
	ca, cb := quantum.Pipe()
	defer ca.Close()
	defer cb.Close()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	base := session.Config{Runner: o.Runner, TagBits: o.TagBits, EpsSec: o.EpsSec, Timeout: o.Timeout, Logger: quiet}
	cfgA, cfgB := base, base
	cfgA.Pulses, cfgA.IntensityProbs = pulses, m.IntensityProbs
	cfgA.Rand = partyRand(o.Seed, "alice", int(frame))
	cfgB.Rand = partyRand(o.Seed, "bob", int(frame))
	var rb session.Result
	var errB error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		rb, errB = session.Bob(ctx, cfgB, link.Rx, cb)
	}()
	ra, errA := session.Alice(ctx, cfgA, link.Tx, ca, frame)
	if errA != nil {
		ca.Close() // release Bob if he still waits
	}
	wg.Wait()
	switch {
	case errA != nil:
		return ra, errA
	case errB != nil:
		return ra, errB
	case ra.FinalBits != rb.FinalBits || string(ra.Key) != string(rb.Key):
		return ra, fmt.Errorf("simrun: Alice's and Bob's keys differ (%d and %d bits)", ra.FinalBits, rb.FinalBits)
	}
	return ra, nil
}

func parseFloats(s string) ([]float64, error) {
	var out []float64
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		v, err := strconv.ParseFloat(f, 64)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	if len(out) == 0 {
		return nil, errors.New("empty list")
	}
	return out, nil
}

func parseInts(s string) ([]int, error) {
	fs, err := parseFloats(s)
	if err != nil {
		return nil, err
	}
	out := make([]int, len(fs))
	for i, f := range fs {
		if f < 1 || f != math.Trunc(f) {
			return nil, fmt.Errorf("block %v is not a positive integer", f)
		}
		out[i] = int(f)
	}
	return out, nil
}

// RunCLI implements `qkdkms sim [flags]`. It returns the exit status.
func RunCLI(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	def := sim.DefaultModel()
	fs := flag.NewFlagSet("qkdkms sim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: qkdkms sim [flags]\n\nRuns BB84 sessions over the simulated link and prints QBER, leakage, final key\nand rates per fiber length and key block size, beside the asymptotic GLLP rate.\n\n")
		fs.PrintDefaults()
	}
	distances := fs.String("distances", "0,25,50,75,100", "fiber lengths in km, comma-separated")
	blocks := fs.String("blocks", "100000,1000000", "key block sizes (sifted key-basis bits per session), comma-separated")
	sessions := fs.Int("sessions", 1, "sessions per distance and block size")
	eve := fs.Float64("eve", 0, "fraction p of pulses an intercept-resend eavesdropper attacks (0..1)")
	native := fs.Bool("native", false, "run the step plugins natively instead of in WASM")
	pluginDir := fs.String("plugins", "", "WASM plugin directory with manifest.json (default: build the shipped plugins)")
	seed := fs.Uint64("seed", 1, "random seed of the link and the sessions")
	tagBits := fs.Int("tag-bits", 64, "verification tag bits t (ε_cor = 2^-t)")
	epsSec := fs.Float64("eps-sec", 1e-9, "secrecy parameter ε_sec")
	timeout := fs.Duration("timeout", 10*time.Minute, "timeout per session")
	quiet := fs.Bool("quiet", false, "no progress bar")
	loss := fs.Float64("loss", def.LossDBPerKm, "fiber loss, dB/km")
	detEff := fs.Float64("detector-eff", def.DetectorEff, "detector efficiency (0..1]")
	dark := fs.Float64("dark-count", def.DarkCount, "dark-count probability per gate per detector")
	misalign := fs.Float64("misalignment", def.Misalignment, "optical misalignment error e_d")
	rate := fs.Float64("pulse-rate", def.PulseRate, "source pulse rate, Hz")
	pz := fs.Float64("pz", def.PZ, "key-basis (Z) probability")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "qkdkms sim: unexpected arguments %q\n", fs.Args())
		return 2
	}
	ds, err := parseFloats(*distances)
	if err != nil {
		fmt.Fprintf(stderr, "qkdkms sim: --distances: %v\n", err)
		return 2
	}
	bs, err := parseInts(*blocks)
	if err != nil {
		fmt.Fprintf(stderr, "qkdkms sim: --blocks: %v\n", err)
		return 2
	}
	m := def
	m.Eve, m.LossDBPerKm, m.DetectorEff, m.DarkCount, m.Misalignment, m.PulseRate, m.PZ = *eve, *loss, *detEff, *dark, *misalign, *rate, *pz
	for _, d := range ds {
		mm := m
		mm.FiberKm = d
		if err := mm.Validate(); err != nil {
			fmt.Fprintf(stderr, "qkdkms sim: %v\n", err)
			return 2
		}
	}

	var runner host.Runner
	mode := "native"
	if *native {
		runner, err = host.Native(nil)
	} else {
		mode = "wasm"
		dir := *pluginDir
		if dir == "" {
			if dir, err = pluginbuild.Dir(); err != nil {
				fmt.Fprintf(stderr, "qkdkms sim: building plugins: %v\n", err)
				return 1
			}
		}
		var h *host.Host
		h, err = host.Open(ctx, dir, host.Options{
			CacheDir: filepath.Join(os.TempDir(), "qkdkms-wazero-cache"),
			Logger:   slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		})
		if err == nil {
			defer h.Close(context.Background())
			runner, err = h.Runner(nil)
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "qkdkms sim: plugins: %v\n", err)
		return 1
	}

	o := Options{
		Distances: ds, Blocks: bs, Sessions: *sessions, Model: m, Seed: *seed,
		TagBits: *tagBits, EpsSec: *epsSec, Timeout: *timeout, Runner: runner,
	}
	if !*quiet {
		o.Progress = stderr
	}
	fmt.Fprintf(stdout, "# qkdkms sim: %s steps [%s]\n", mode, runner.Identity())
	fmt.Fprintf(stdout, "# model: %.2f dB/km, η_det %.3f, p_dc %.1e, e_d %.3f, μ %v, p %v, p_Z %.2f, %.3g Hz, Eve p=%.2f; ε_sec %.0e, ε_cor 2^-%d\n",
		m.LossDBPerKm, m.DetectorEff, m.DarkCount, m.Misalignment, m.Intensities, m.IntensityProbs, m.PZ, m.PulseRate, m.Eve, o.EpsSec, o.TagBits)
	fmt.Fprintf(stdout, "# GLLP: asymptotic decoy-state rate per pulse (signal μ, sifting p_Z², the row's measured f)\n")
	rows, err := Run(ctx, o)
	names := make([]string, len(steps.Kinds))
	for i, k := range steps.Kinds {
		names[i] = string(k)
	}
	if werr := WriteTable(stdout, names, rows); werr != nil && err == nil {
		err = werr
	}
	if err != nil {
		fmt.Fprintf(stderr, "qkdkms sim: %v\n", err)
		return 1
	}
	return 0
}
