package instrument

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"
	"github.com/tetratelabs/wazero/sys"

	"qkdkms/plugins/instrument/wasmtest"
	"qkdkms/plugins/pluginbuild"
)

// runtime returns a wazero runtime with the yield import (counting its
// calls) and env.add1, an imported function some test modules call.
func newRuntime(t testing.TB) (wazero.Runtime, *atomic.Int64) {
	ctx := context.Background()
	rt := wazero.NewRuntime(ctx)
	t.Cleanup(func() { rt.Close(ctx) })
	var yields atomic.Int64
	_, err := rt.NewHostModuleBuilder(ImportModule).NewFunctionBuilder().
		WithGoModuleFunction(api.GoModuleFunc(func(_ context.Context, _ api.Module, st []uint64) {
			yields.Add(1)
			st[0] = Budget
		}), nil, []api.ValueType{api.ValueTypeI32}).Export(ImportName).Instantiate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, err = rt.NewHostModuleBuilder("env").NewFunctionBuilder().
		WithGoModuleFunction(api.GoModuleFunc(func(_ context.Context, _ api.Module, st []uint64) {
			st[0] = uint64(uint32(api.DecodeI32(st[0]) + 1))
		}), []api.ValueType{api.ValueTypeI32}, []api.ValueType{api.ValueTypeI32}).Export("add1").Instantiate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := wasi_snapshot_preview1.Instantiate(ctx, rt); err != nil {
		t.Fatal(err)
	}
	return rt, &yields
}

// call instantiates wasm and calls export fn with args, returning its
// results or the error as a string.
func call(t testing.TB, rt wazero.Runtime, wasm []byte, fn string, args ...uint64) string {
	ctx := context.Background()
	m, err := rt.InstantiateWithConfig(ctx, wasm, wazero.NewModuleConfig().WithName("").WithStartFunctions())
	if err != nil {
		return "instantiate: " + err.Error()
	}
	defer m.Close(ctx)
	f := m.ExportedFunction(fn)
	if f == nil {
		t.Fatalf("no export %s", fn)
	}
	res, err := f.Call(ctx, args...)
	if err != nil {
		return "error"
	}
	return fmt.Sprint(res)
}

var testModules = []struct {
	name string
	mod  wasmtest.Module
	fn   string
	args []uint64
	want string
	// minimum yields: loops and calls must reach the host
	minYields int64
}{
	{
		name: "counting loop",
		mod: wasmtest.Module{
			Types: [][2][]byte{{{wasmtest.I32}, {wasmtest.I32}}},
			Funcs: []wasmtest.Func{{Name: "run", Type: 0, Locals: []byte{1, 1, wasmtest.I32}, Body: wasmtest.Cat(
				// acc = 0; do { acc += n; n-- } while n != 0; return acc
				[]byte{0x03, 0x40},
				[]byte{0x20, 1, 0x20, 0, 0x6A, 0x21, 1},                      // acc += n
				[]byte{0x20, 0}, wasmtest.I32Const(1), []byte{0x6B, 0x22, 0}, // n = n - 1 (tee)
				[]byte{0x0D, 0, 0x0B}, // br_if 0; end
				[]byte{0x20, 1},
			)}},
		},
		fn: "run", args: []uint64{100000}, want: "[705082704]", minYields: 9,
	},
	{
		name: "loop with block parameters (multi-value)",
		mod: wasmtest.Module{
			Types: [][2][]byte{{{wasmtest.I32}, {wasmtest.I32}}, {{wasmtest.I32, wasmtest.I32}, {wasmtest.I32, wasmtest.I32}}},
			Funcs: []wasmtest.Func{{Name: "run", Type: 0, Body: wasmtest.Cat(
				// (acc, n) on the stack; loop type 1 takes and yields both
				wasmtest.I32Const(0), []byte{0x20, 0},
				[]byte{0x03, 1}, // loop (type 1)
				// stack: acc n → acc+n n-1, repeat while n-1 != 0
				[]byte{0x22, 0},                                     // local.tee 0 (n)
				[]byte{0x6A},                                        // acc + n
				[]byte{0x20, 0}, wasmtest.I32Const(1), []byte{0x6B}, // n - 1
				[]byte{0x22, 0, 0x20, 0, 0x0D, 0}, // tee n; br_if 0 with (acc, n-1)
				[]byte{0x0B, 0x1A},                // end; drop n
			)}},
		},
		fn: "run", args: []uint64{30000}, want: "[450015000]", minYields: 2,
	},
	{
		name: "recursion, imported function, indirect calls, start",
		mod: wasmtest.Module{
			Types:   [][2][]byte{{{wasmtest.I32}, {wasmtest.I32}}, {nil, nil}},
			Imports: []wasmtest.Import{{Mod: "env", Name: "add1", Type: 0}},
			Globals: [][]byte{{wasmtest.I32, 1, 0x41, 0, 0x0B}},
			Funcs: []wasmtest.Func{
				// 1: fib(n) = n < 2 ? n : fib(n-1) + fib(n-2), calls through the table for n-2
				{Name: "fib", Type: 0, Body: wasmtest.Cat(
					[]byte{0x20, 0}, wasmtest.I32Const(2), []byte{0x48, 0x04, wasmtest.I32}, // if n < 2 (result i32)
					[]byte{0x20, 0},
					[]byte{0x05},
					[]byte{0x20, 0}, wasmtest.I32Const(1), []byte{0x6B, 0x10, 1}, // fib(n-1)
					[]byte{0x20, 0}, wasmtest.I32Const(2), []byte{0x6B}, wasmtest.I32Const(0), []byte{0x11, 0, 0}, // table[0](n-2)
					[]byte{0x6A, 0x0B},
				)},
				// 2: start: g = add1(41)
				{Type: 1, Body: wasmtest.Cat(wasmtest.I32Const(41), []byte{0x10, 0, 0x24, 0})},
				// 3: run(n) = fib(n) + g
				{Name: "run", Type: 0, Body: wasmtest.Cat([]byte{0x20, 0, 0x10, 1, 0x23, 0, 0x6A})},
			},
			Start:     2,
			Table:     true,
			ElemFuncs: []uint32{1},
			Custom:    []byte{1, 7, 2, 1, 1, 'f', 3, 1, 'r'}, // function names, which would go stale
		},
		fn: "run", args: []uint64{25}, want: "[75067]", minYields: 20,
	},
}

func TestRewriteKeepsBehaviour(t *testing.T) {
	for _, tc := range testModules {
		t.Run(tc.name, func(t *testing.T) {
			orig := tc.mod.Bytes()
			rt, yields := newRuntime(t)
			if got := call(t, rt, orig, tc.fn, tc.args...); got != tc.want {
				t.Fatalf("original module: got %s, want %s", got, tc.want)
			}
			rw, err := Rewrite(orig)
			if err != nil {
				t.Fatal(err)
			}
			if got := call(t, rt, rw, tc.fn, tc.args...); got != tc.want {
				t.Fatalf("rewritten module: got %s, want %s", got, tc.want)
			}
			if y := yields.Load(); y < tc.minYields {
				t.Fatalf("the rewritten module called yield %d times, want ≥ %d", y, tc.minYields)
			}
			t.Logf("%d bytes → %d bytes, %d yields", len(orig), len(rw), yields.Load())
		})
	}
}

// TestRewriteShippedPlugins: every shipped plugin (the Go builds and the
// committed C builds) rewrites into a module wazero compiles, with the same
// exports plus the one import; rewriting twice is refused.
func TestRewriteShippedPlugins(t *testing.T) {
	dir, err := pluginbuild.Dir()
	if err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob(filepath.Join(dir, "*.wasm"))
	root, err := pluginbuild.Root()
	if err != nil {
		t.Fatal(err)
	}
	cfiles, _ := filepath.Glob(filepath.Join(root, "plugins/c/wasm/*.wasm"))
	files = append(files, cfiles...)
	if len(files) < 6 {
		t.Fatalf("found only %d plugins", len(files))
	}
	ctx := context.Background()
	rt, _ := newRuntime(t)
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		rw, err := Rewrite(b)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		orig, err := rt.CompileModule(ctx, b)
		if err != nil {
			t.Fatal(err)
		}
		cm, err := rt.CompileModule(ctx, rw)
		if err != nil {
			t.Fatalf("%s: rewritten module does not compile: %v", f, err)
		}
		if len(cm.ImportedFunctions()) != len(orig.ImportedFunctions())+1 {
			t.Fatalf("%s: imports %d → %d", f, len(orig.ImportedFunctions()), len(cm.ImportedFunctions()))
		}
		for name, fd := range orig.ExportedFunctions() {
			nd, ok := cm.ExportedFunctions()[name]
			if !ok || fmt.Sprint(nd.ParamTypes(), nd.ResultTypes()) != fmt.Sprint(fd.ParamTypes(), fd.ResultTypes()) {
				t.Fatalf("%s: export %s lost or changed", f, name)
			}
		}
		if _, err := Rewrite(rw); !errors.Is(err, ErrUnsupported) {
			t.Fatalf("%s: rewriting twice: want ErrUnsupported, got %v", f, err)
		}
		t.Logf("%s: %d → %d bytes", filepath.Base(f), len(b), len(rw))
	}
}

func TestRewriteRefuses(t *testing.T) {
	good := testModules[0].mod.Bytes()
	threads := wasmtest.Module{
		Types: [][2][]byte{{nil, nil}},
		Funcs: []wasmtest.Func{{Type: 0, Body: []byte{0xFE, 0x03, 0x00}}}, // atomic.fence
	}.Bytes()
	exceptions := wasmtest.Module{
		Types: [][2][]byte{{nil, nil}},
		Funcs: []wasmtest.Func{{Type: 0, Body: []byte{0x06, 0x40, 0x0B}}}, // try … end
	}.Bytes()
	for _, tc := range []struct {
		name string
		in   []byte
		want error
	}{
		{"empty", nil, ErrMalformed},
		{"not wasm", []byte("#!/bin/sh\necho hi\n"), ErrMalformed},
		{"version 2", append([]byte("\x00asm\x02\x00\x00\x00"), good[8:]...), ErrUnsupported},
		{"truncated", good[:len(good)-3], ErrMalformed},
		{"section past the end", append(append([]byte(nil), good...), 1, 100, 0), ErrMalformed},
		{"sections out of order", append(append([]byte(nil), good...), 1, 1, 0), ErrMalformed},
		{"atomics", threads, ErrUnsupported},
		{"exceptions", exceptions, ErrUnsupported},
		{"unknown section", append(append([]byte(nil), good...), 13, 0), ErrUnsupported},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Rewrite(tc.in)
			if !errors.Is(err, tc.want) {
				t.Fatalf("want %v, got %v", tc.want, err)
			}
		})
	}
}

// FuzzRewrite: Rewrite never panics, and a module it rewrites that wazero
// accepts rewrites into one wazero accepts, whose exported functions return
// the same results (or both trap) on the same arguments.
func FuzzRewrite(f *testing.F) {
	for _, tc := range testModules {
		f.Add(tc.mod.Bytes())
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		rw, err := Rewrite(b)
		if err != nil {
			// Refused: the host never hands it to wazero, whose decoder
			// can allocate by a malformed count (gigabytes for this
			// package's corpus entry fabc7569…). Valid modules being
			// accepted is TestRewriteShippedPlugins' and the seeds' job.
			return
		}
		ctx := context.Background()
		rt := wazero.NewRuntimeWithConfig(ctx, wazero.NewRuntimeConfig().WithCloseOnContextDone(true))
		defer rt.Close(ctx)
		orig, cerr := rt.CompileModule(ctx, b)
		if cerr != nil {
			return // not a module wazero runs: only "no panic" matters
		}
		if _, err := yieldingRuntime(t).CompileModule(ctx, rw); err != nil {
			t.Fatalf("rewritten module invalid: %v", err)
		}
		if len(orig.ImportedFunctions()) > 0 {
			return // needs imports the fuzzer does not provide
		}
		rt2 := yieldingRuntime(t)
		for name, fd := range orig.ExportedFunctions() {
			args := make([]uint64, len(fd.ParamTypes()))
			for i := range args {
				args[i] = uint64(i + 3)
			}
			want := callBounded(rt, b, name, args)
			got := callBounded(rt2, rw, name, args)
			if want != "timeout" && got != "timeout" && got != want {
				t.Fatalf("%s(%v): original %s, rewritten %s", name, args, want, got)
			}
		}
	})
}

// yieldingRuntime has a yield import that stops a call once its context is
// done, as the plugin host's does.
func yieldingRuntime(t testing.TB) wazero.Runtime {
	ctx := context.Background()
	rt := wazero.NewRuntime(ctx)
	t.Cleanup(func() { rt.Close(ctx) })
	_, err := rt.NewHostModuleBuilder(ImportModule).NewFunctionBuilder().
		WithGoModuleFunction(api.GoModuleFunc(func(ctx context.Context, _ api.Module, st []uint64) {
			if ctx.Err() != nil {
				panic(sys.NewExitError(sys.ExitCodeDeadlineExceeded))
			}
			st[0] = Budget
		}), nil, []api.ValueType{api.ValueTypeI32}).Export(ImportName).Instantiate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return rt
}

// callBounded calls fn for at most 200 ms; "timeout" when it ran out.
func callBounded(rt wazero.Runtime, wasm []byte, fn string, args []uint64) string {
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	m, err := rt.InstantiateWithConfig(ctx, wasm, wazero.NewModuleConfig().WithName(""))
	if err != nil {
		if ctx.Err() != nil {
			return "timeout"
		}
		return "instantiate error"
	}
	defer m.Close(context.Background())
	res, err := m.ExportedFunction(fn).Call(ctx, args...)
	if ctx.Err() != nil {
		return "timeout"
	}
	if err != nil {
		return "error"
	}
	return fmt.Sprint(res)
}
