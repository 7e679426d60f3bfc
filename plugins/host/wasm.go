package host

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/experimental"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"
	"github.com/tetratelabs/wazero/sys"

	"qkdkms/plugins/instrument"
	"qkdkms/plugins/steps"
)

// Entry is one module in a manifest.
type Entry struct {
	Info
	File string `json:"file"`
}

// Manifest is manifest.json in a plugin directory:
//
//	{"abi": 1, "plugins": [{"name": "cascade", "step": "reconcile",
//	  "version": "1.0.0", "abi": 1, "file": "cascade.wasm", "sha256": "…"}, …]}
type Manifest struct {
	ABI     int     `json:"abi"`
	Plugins []Entry `json:"plugins"`
}

// ReadManifest reads and checks dir/manifest.json.
func ReadManifest(dir string) (Manifest, error) {
	b, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if err != nil {
		return Manifest{}, fmt.Errorf("%w: %w", ErrManifest, err)
	}
	var m Manifest
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return Manifest{}, fmt.Errorf("%w: %w", ErrManifest, err)
	}
	if m.ABI != steps.ABIVersion {
		return Manifest{}, fmt.Errorf("%w: ABI %d, host speaks %d", ErrManifest, m.ABI, steps.ABIVersion)
	}
	seen := map[string]bool{}
	for _, e := range m.Plugins {
		if e.Name == "" || e.Version == "" || e.File == "" || len(e.SHA256) != 64 || filepath.Base(e.File) != e.File {
			return Manifest{}, fmt.Errorf("%w: incomplete entry %+v", ErrManifest, e)
		}
		if seen[e.Name] {
			return Manifest{}, fmt.Errorf("%w: duplicate plugin %q", ErrManifest, e.Name)
		}
		seen[e.Name] = true
	}
	return m, nil
}

// Options configure a Host.
type Options struct {
	// CacheDir holds wazero's compilation cache; empty: in memory only.
	CacheDir string
	// MemoryLimitPages bounds each instance's memory in 64 KiB pages
	// (default 16384 = 1 GiB).
	MemoryLimitPages uint32
	// CallTimeout bounds each call into a plugin (default 60 s); a call
	// past it fails with a "deadline exceeded" trap and closes the
	// instance. Modules are instrumented at load time (plugins/instrument)
	// so that they call the host every instrument.Budget loop iterations or
	// calls, where the deadline is checked and the goroutine yields.
	CallTimeout time.Duration
	Logger      *slog.Logger
}

// Host is the wazero plugin host.
type Host struct {
	opts  Options
	rt    wazero.Runtime
	cache wazero.CompilationCache
	log   *slog.Logger

	mu   sync.Mutex
	mods map[string]*module // by name
	list []Info

	// Calls into instances hold life for reading; Close cancels closing
	// (the calls' yields see it and stop) and takes life for writing, so
	// the runtime, and with it every instance's memory mapping, is closed
	// only once no call runs.
	life   sync.RWMutex
	closed bool
	// uninstrumented: compile modules as they are (tests only, to check
	// that instrumentation changes no output; such a host cannot stop a
	// runaway plugin).
	uninstrumented bool
	closing        context.Context
	stop           context.CancelFunc
}

type module struct {
	info     Info
	compiled wazero.CompiledModule
}

// New starts a host with no plugins.
func New(ctx context.Context, opts Options) (*Host, error) {
	if opts.MemoryLimitPages == 0 {
		opts.MemoryLimitPages = 16384
	}
	if opts.CallTimeout == 0 {
		opts.CallTimeout = 60 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	// No WithCloseOnContextDone: it leaves native code at every loop
	// header. The instrumented modules call yield instead (ABI.md §1).
	cfg := wazero.NewRuntimeConfig().
		WithMemoryLimitPages(opts.MemoryLimitPages)
	h := &Host{opts: opts, log: opts.Logger, mods: map[string]*module{}}
	h.closing, h.stop = context.WithCancel(context.Background())
	if opts.CacheDir != "" {
		c, err := wazero.NewCompilationCacheWithDir(opts.CacheDir)
		if err != nil {
			return nil, fmt.Errorf("plugin host: compilation cache: %w", err)
		}
		h.cache = c
		cfg = cfg.WithCompilationCache(c)
	}
	h.rt = wazero.NewRuntimeWithConfig(ctx, cfg)
	if _, err := wasi_snapshot_preview1.Instantiate(ctx, h.rt); err != nil {
		h.rt.Close(ctx)
		return nil, fmt.Errorf("plugin host: wasi: %w", err)
	}
	_, err := h.rt.NewHostModuleBuilder(instrument.ImportModule).
		NewFunctionBuilder().
		WithGoModuleFunction(api.GoModuleFunc(yield), nil, []api.ValueType{api.ValueTypeI32}).
		Export(instrument.ImportName).
		Instantiate(ctx)
	if err != nil {
		h.rt.Close(ctx)
		return nil, fmt.Errorf("plugin host: yield import: %w", err)
	}
	return h, nil
}

// yield is the host function an instrumented module calls every
// instrument.Budget units of work: it stops the call once its context is
// done and otherwise lets the Go scheduler (and a stop-the-world) in, then
// hands the module its next budget.
func yield(ctx context.Context, _ api.Module, stack []uint64) {
	err := ctx.Err()
	if err == nil {
		if d, ok := ctx.Deadline(); ok && !time.Now().Before(d) {
			err = context.DeadlineExceeded
		}
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		panic(sys.NewExitError(sys.ExitCodeDeadlineExceeded))
	case err != nil:
		panic(sys.NewExitError(sys.ExitCodeContextCanceled))
	}
	runtime.Gosched()
	stack[0] = instrument.Budget
}

// Open starts a host and loads every plugin of dir/manifest.json.
func Open(ctx context.Context, dir string, opts Options) (*Host, error) {
	m, err := ReadManifest(dir)
	if err != nil {
		return nil, err
	}
	h, err := New(ctx, opts)
	if err != nil {
		return nil, err
	}
	for _, e := range m.Plugins {
		b, err := readModule(dir, e)
		if err == nil {
			err = h.Add(ctx, e.Info, b)
		}
		if err != nil {
			h.Close(ctx)
			return nil, fmt.Errorf("plugin %s: %w", e.Name, err)
		}
	}
	return h, nil
}

func readModule(dir string, e Entry) ([]byte, error) {
	return os.ReadFile(filepath.Join(dir, e.File))
}

// required exports and their signatures (ABI.md §3)
var required = map[string][2]int{ // name → (#params, #results), all i32
	"qkd_abi_version": {0, 1},
	"qkd_alloc":       {1, 1},
	"qkd_new":         {5, 1},
	"qkd_step":        {5, 1},
	"qkd_result_ptr":  {0, 1},
	"qkd_result_len":  {0, 1},
}

// Add checks a module against its manifest entry (sha256, imports, exports,
// ABI version) and compiles it. A plugin of the same name is replaced.
func (h *Host) Add(ctx context.Context, info Info, wasm []byte) error {
	sum := sha256.Sum256(wasm)
	if got := hex.EncodeToString(sum[:]); got != info.SHA256 {
		return fmt.Errorf("%w: %s: manifest says %s, file is %s", ErrHash, info.Name, info.SHA256, got)
	}
	if info.ABI != steps.ABIVersion {
		return fmt.Errorf("%w: %s declares ABI %d, host speaks %d", ErrABI, info.Name, info.ABI, steps.ABIVersion)
	}
	valid := false
	for _, k := range steps.Kinds {
		valid = valid || k == info.Kind
	}
	if !valid {
		return fmt.Errorf("%w: %s: unknown step %q", ErrManifest, info.Name, info.Kind)
	}
	// The sha256 pin is on the module as installed; what is compiled (and
	// cached) is its instrumented form.
	rewritten, err := instrument.Rewrite(wasm)
	if err != nil {
		return fmt.Errorf("%w: %s: %w", ErrABI, info.Name, err)
	}
	if h.uninstrumented {
		rewritten = wasm
	}
	cm, err := h.rt.CompileModule(ctx, rewritten)
	if err != nil {
		return fmt.Errorf("%w: %s: compile: %w", ErrABI, info.Name, err)
	}
	if err := checkModule(cm); err != nil {
		cm.Close(ctx)
		return fmt.Errorf("%w: %s: %w", ErrABI, info.Name, err)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if old, ok := h.mods[info.Name]; ok {
		old.compiled.Close(ctx)
		for i := range h.list {
			if h.list[i].Name == info.Name {
				h.list[i] = info
			}
		}
	} else {
		h.list = append(h.list, info)
	}
	h.mods[info.Name] = &module{info: info, compiled: cm}
	h.log.Info("plugin loaded", "name", info.Name, "step", info.Kind, "version", info.Version, "sha256", info.SHA256)
	return nil
}

func checkModule(cm wazero.CompiledModule) error {
	for _, f := range cm.ImportedFunctions() {
		mod, name, _ := f.Import()
		if mod == instrument.ImportModule && name == instrument.ImportName {
			continue // added by instrument.Rewrite, which refuses modules importing it themselves
		}
		if mod != wasi_snapshot_preview1.ModuleName {
			return fmt.Errorf("imports %s.%s: only %s is provided", mod, name, wasi_snapshot_preview1.ModuleName)
		}
	}
	ex := cm.ExportedFunctions()
	for name, sig := range required {
		f, ok := ex[name]
		if !ok {
			return fmt.Errorf("missing export %s", name)
		}
		if len(f.ParamTypes()) != sig[0] || len(f.ResultTypes()) != sig[1] {
			return fmt.Errorf("export %s has the wrong signature", name)
		}
		for _, t := range append(f.ParamTypes(), f.ResultTypes()...) {
			if t != api.ValueTypeI32 {
				return fmt.Errorf("export %s has non-i32 types", name)
			}
		}
	}
	if _, ok := cm.ExportedMemories()["memory"]; !ok {
		return errors.New("missing exported memory")
	}
	return nil
}

// Plugins lists the loaded plugins in pipeline order.
func (h *Host) Plugins() []Info {
	h.mu.Lock()
	defer h.mu.Unlock()
	return sortedInfos(h.list)
}

// Runner returns a Runner over the loaded plugins. It keeps using the
// modules it picked even if Add replaces them later.
func (h *Host) Runner(sel Selection) (Runner, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	s, err := choose(sortedInfos(h.list), sel)
	if err != nil {
		return nil, err
	}
	r := &wasmRunner{h: h, sel: s, mods: map[steps.Kind]*module{}}
	for k, i := range s {
		r.mods[k] = h.mods[i.Name]
	}
	return r, nil
}

// Close closes the runtime and every instance.
func (h *Host) Close(ctx context.Context) error {
	h.stop()
	h.life.Lock()
	h.closed = true
	h.life.Unlock()
	err := h.rt.Close(ctx)
	if h.cache != nil {
		h.cache.Close(ctx)
	}
	return err
}

// enter starts a call into an instance: it fails once the host is closed,
// and the returned context ends when the host starts closing. leave ends
// the call.
func (h *Host) enter(ctx context.Context) (cctx context.Context, leave func(), err error) {
	h.life.RLock()
	if h.closed {
		h.life.RUnlock()
		return nil, nil, ErrClosed
	}
	return &callContext{Context: ctx, deadline: time.Now().Add(h.opts.CallTimeout), h: h}, h.life.RUnlock, nil
}

// callContext is the context of one call into an instance: the caller's
// values and cancellation, plus the call's deadline and the host's closing,
// which Err reports when asked — by the instrumented module's yields —
// without a timer per call (a session makes thousands of calls).
type callContext struct {
	context.Context
	deadline time.Time
	h        *Host
}

func (c *callContext) Deadline() (time.Time, bool) {
	if d, ok := c.Context.Deadline(); ok && d.Before(c.deadline) {
		return d, true
	}
	return c.deadline, true
}

func (c *callContext) Err() error {
	if err := c.Context.Err(); err != nil {
		return err
	}
	if c.h.closing.Err() != nil {
		return context.Canceled
	}
	if !time.Now().Before(c.deadline) {
		return context.DeadlineExceeded
	}
	return nil
}

type wasmRunner struct {
	h    *Host
	sel  map[steps.Kind]Info
	mods map[steps.Kind]*module
}

func (r *wasmRunner) Plugin(k steps.Kind) Info { return r.sel[k] }
func (r *wasmRunner) Identity() string         { return identity(r.sel) }

// New instantiates a fresh module and calls qkd_new.
func (r *wasmRunner) New(ctx context.Context, kind steps.Kind, role steps.Role, params, seed []byte) (Instance, error) {
	m, ok := r.mods[kind]
	if !ok {
		return nil, fmt.Errorf("%w: step kind %q", ErrUnknown, kind)
	}
	stderr := &limitedBuffer{max: 4096}
	key := sha256.Sum256(append([]byte("qkdkms/wasi-random\x00"), seed...))
	// No real time reaches the guest: the wall clock is frozen at the epoch,
	// the monotonic clock is a counter advancing 1 µs per read (the Go
	// runtime refuses a monotonic clock that reads zero).
	zeroWall := func() (int64, int32) { return 0, 0 }
	var ticks atomic.Int64
	zeroNano := func() int64 { return ticks.Add(1000) }
	cfg := wazero.NewModuleConfig().
		WithName("").
		WithStartFunctions("_initialize").
		WithStdout(stderr).
		WithStderr(stderr).
		WithRandSource(rand.NewChaCha8(key)).
		WithWalltime(zeroWall, sys.ClockResolution(1)).
		WithNanotime(zeroNano, sys.ClockResolution(1)).
		WithNanosleep(func(int64) {}) // poll_oneoff never blocks the host: no real time for the guest
	inst := &wasmInst{h: r.h, info: m.info, stderr: stderr}
	cctx, leave, err := r.h.enter(ctx)
	if err != nil {
		return nil, err
	}
	defer leave()
	mod, err := r.h.rt.InstantiateModule(experimental.WithMemoryAllocator(cctx, memoryAllocator), m.compiled, cfg)
	if err != nil {
		return nil, inst.trap("instantiate", err)
	}
	inst.mod = mod
	inst.mem = mod.Memory()
	inst.abi = mod.ExportedFunction("qkd_abi_version")
	inst.alloc = mod.ExportedFunction("qkd_alloc")
	inst.newFn = mod.ExportedFunction("qkd_new")
	inst.step = mod.ExportedFunction("qkd_step")
	inst.rptr = mod.ExportedFunction("qkd_result_ptr")
	inst.rlen = mod.ExportedFunction("qkd_result_len")
	v, err := inst.call(cctx, "qkd_abi_version", inst.abi)
	if err != nil {
		inst.Close(ctx)
		return nil, err
	}
	if v != steps.ABIVersion {
		inst.Close(ctx)
		return nil, fmt.Errorf("%w: %s reports ABI %d", ErrABI, m.info.Name, v)
	}
	pp, err := inst.put(cctx, params)
	if err == nil {
		var sp uint32
		if sp, err = inst.put(cctx, seed); err == nil {
			var st uint32
			st, err = inst.call(cctx, "qkd_new", inst.newFn, uint64(role), uint64(pp), uint64(len(params)), uint64(sp), uint64(len(seed)))
			if err == nil && st != 0 {
				err = inst.guestError(st)
			}
		}
	}
	if err != nil {
		inst.Close(ctx)
		return nil, err
	}
	return inst, nil
}

type wasmInst struct {
	h                                   *Host
	info                                Info
	mod                                 api.Module
	mem                                 api.Memory
	stderr                              *limitedBuffer
	abi, alloc, newFn, step, rptr, rlen api.Function
	closed                              bool
	// stack holds a call's parameters and then its result (CallWithStack:
	// no allocation per call; a session makes thousands). The ABI's
	// exports take at most five parameters.
	stack [5]uint64
}

func (i *wasmInst) trap(what string, err error) error {
	msg := ""
	if s := i.stderr.String(); s != "" {
		msg = "; plugin stderr: " + s
	}
	var ee *sys.ExitError
	if errors.As(err, &ee) {
		switch ee.ExitCode() {
		case sys.ExitCodeDeadlineExceeded:
			return fmt.Errorf("%w: %s: %s: call deadline exceeded%s", ErrTrap, i.info.Name, what, msg)
		case sys.ExitCodeContextCanceled:
			return fmt.Errorf("%w: %s: %s: canceled: %w%s", ErrTrap, i.info.Name, what, context.Canceled, msg)
		}
	}
	return fmt.Errorf("%w: %s: %s: %w%s", ErrTrap, i.info.Name, what, err, msg)
}

func (i *wasmInst) call(ctx context.Context, name string, f api.Function, args ...uint64) (uint32, error) {
	if i.closed {
		return 0, ErrClosed
	}
	n := copy(i.stack[:], args)
	if err := f.CallWithStack(ctx, i.stack[:max(n, 1)]); err != nil {
		err = i.trap(name, err)
		i.Close(ctx)
		return 0, err
	}
	return api.DecodeU32(i.stack[0]), nil
}

// put copies b into a guest buffer from qkd_alloc.
func (i *wasmInst) put(ctx context.Context, b []byte) (uint32, error) {
	p, err := i.call(ctx, "qkd_alloc", i.alloc, uint64(len(b)))
	if err != nil {
		return 0, err
	}
	if len(b) > 0 && !i.mem.Write(p, b) {
		return 0, fmt.Errorf("%w: %s: qkd_alloc returned %#x, outside memory for %d bytes", ErrResult, i.info.Name, p, len(b))
	}
	return p, nil
}

func (i *wasmInst) blob(ctx context.Context) ([]byte, error) {
	p, err := i.call(ctx, "qkd_result_ptr", i.rptr)
	if err != nil {
		return nil, err
	}
	n, err := i.call(ctx, "qkd_result_len", i.rlen)
	if err != nil {
		return nil, err
	}
	if n > 1<<30 {
		return nil, fmt.Errorf("%w: %s: result length %d", ErrResult, i.info.Name, n)
	}
	b, ok := i.mem.Read(p, n)
	if !ok {
		return nil, fmt.Errorf("%w: %s: result [%#x, +%d) outside memory", ErrResult, i.info.Name, p, n)
	}
	return append([]byte(nil), b...), nil
}

func (i *wasmInst) guestError(status uint32) error {
	b, err := i.blob(context.Background())
	if err != nil {
		return err
	}
	if status != 1 {
		return fmt.Errorf("%w: %s: unknown status %d", ErrResult, i.info.Name, status)
	}
	if len(b) > 1024 {
		b = b[:1024]
	}
	return fmt.Errorf("%w: %s: %s", ErrPlugin, i.info.Name, string(bytes.ToValidUTF8(b, []byte("?"))))
}

// Step implements Instance.
func (i *wasmInst) Step(ctx context.Context, in steps.Input) (steps.Result, error) {
	if i.closed {
		return steps.Result{}, ErrClosed
	}
	cctx, leave, err := i.h.enter(ctx)
	if err != nil {
		return steps.Result{}, err
	}
	defer leave()
	ip, err := i.put(cctx, in.Data)
	if err != nil {
		return steps.Result{}, err
	}
	var pp uint32
	var flags uint64
	if in.HasPeer {
		flags = 1
		if pp, err = i.put(cctx, in.Peer); err != nil {
			return steps.Result{}, err
		}
	}
	st, err := i.call(cctx, "qkd_step", i.step, uint64(ip), uint64(len(in.Data)), uint64(pp), uint64(len(in.Peer)), flags)
	if err != nil {
		return steps.Result{}, err
	}
	if st != 0 {
		return steps.Result{}, i.guestError(st)
	}
	b, err := i.blob(cctx)
	if err != nil {
		return steps.Result{}, err
	}
	r, err := steps.DecodeResult(b)
	if err != nil {
		return steps.Result{}, fmt.Errorf("%w: %s: %w", ErrResult, i.info.Name, err)
	}
	return r, nil
}

// zero overwrites the guest's whole linear memory, unless closing the
// instance unmaps it anyway (memory_unix.go).
func (i *wasmInst) zero() {
	if i.mem == nil || unmapsOnClose {
		return
	}
	if b, ok := i.mem.Read(0, i.mem.Size()); ok {
		clear(b)
	}
}

// Close zeroes the guest memory and closes the instance.
func (i *wasmInst) Close(ctx context.Context) error {
	i.closed = true
	i.zero()
	if i.mod == nil {
		return nil
	}
	err := i.mod.Close(ctx)
	i.mod, i.mem = nil, nil
	return err
}

// limitedBuffer keeps the first max bytes written to it.
type limitedBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if room := l.max - len(l.b); room > 0 {
		l.b = append(l.b, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

func (l *limitedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return string(bytes.TrimSpace(l.b))
}
