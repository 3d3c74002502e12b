// gottrpc: a small Go ttrpc peer (server, client, benchmark, golden vectors)
// used by pykata's interop tests and benchmarks.
//
// It is built in GOPATH mode against Debian's packaged sources of
// github.com/containerd/ttrpc 1.1.1 (the version containerd 1.6 uses), with no
// network access; see build.py next to this file.
//
// Payloads are raw bytes on the wire: the rawMsg type below implements gogo's
// Marshaler/Unmarshaler, so the ttrpc codec puts its bytes into
// Request.payload / Response.payload verbatim (no protobuf wrapper).
//
// Subcommands:
//
//	gottrpc serve  -socket PATH
//	gottrpc call   -socket PATH -service S -method M [-payload-hex HEX | -payload-file F] [-timeout-ms N] [-md k=v]...
//	gottrpc bench  -socket PATH -service S -method M [-size N | -payload-hex HEX | -payload-file F] [-concurrency C] [-duration-ms D]
//	gottrpc rawreq -service S -method M [-payload-hex HEX] [-timeout-nano N] [-md k=v]...
//	gottrpc rawresp [-code N] [-message S] [-payload-hex HEX]
package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/ttrpc"
	"github.com/gogo/protobuf/proto"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// EchoService is the service name the test server registers.
const EchoService = "pykata.test.Echo"

// rawMsg is a proto.Message whose wire form is exactly its bytes.
type rawMsg struct{ b []byte }

func (m *rawMsg) Reset()                   { m.b = nil }
func (m *rawMsg) String() string           { return hex.EncodeToString(m.b) }
func (m *rawMsg) ProtoMessage()            {}
func (m *rawMsg) Marshal() ([]byte, error) { return m.b, nil }

// Unmarshal keeps buf: ttrpc hands us a payload slice decoded (copied) out of
// its frame buffer, so it is ours.
func (m *rawMsg) Unmarshal(buf []byte) error { m.b = buf; return nil }

// mdFlags collects repeated -md key=value flags in order.
type mdFlags [][2]string

func (f *mdFlags) String() string { return fmt.Sprint(*f) }
func (f *mdFlags) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok {
		return fmt.Errorf("metadata %q: want key=value", s)
	}
	*f = append(*f, [2]string{k, v})
	return nil
}

func die(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "gottrpc: "+format+"\n", args...)
	os.Exit(2)
}

func printJSON(v interface{}) {
	b, err := json.Marshal(v)
	if err != nil {
		die("json: %v", err)
	}
	os.Stdout.Write(append(b, '\n'))
}

// loadPayload returns the payload from -payload-file if set, else from -payload-hex.
func loadPayload(hexStr, file string) []byte {
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			die("payload file: %v", err)
		}
		return b
	}
	return decodeHex(hexStr)
}

func decodeHex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		die("bad hex payload: %v", err)
	}
	return b
}

// errStatus maps an error from Client.Call to a gRPC status.
func errStatus(err error) *status.Status {
	if err == nil {
		return status.New(codes.OK, "")
	}
	if st, ok := status.FromError(err); ok {
		return st
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return status.New(codes.DeadlineExceeded, err.Error())
	case errors.Is(err, context.Canceled):
		return status.New(codes.Canceled, err.Error())
	case errors.Is(err, ttrpc.ErrClosed):
		return status.New(codes.Unavailable, err.Error())
	}
	return status.New(codes.Unknown, err.Error())
}

// ---------------------------------------------------------------- serve

func echoMethods() map[string]ttrpc.Method {
	read := func(unmarshal func(interface{}) error) (*rawMsg, error) {
		var req rawMsg
		if err := unmarshal(&req); err != nil {
			return nil, err
		}
		return &req, nil
	}
	return map[string]ttrpc.Method{
		// Echo: the response payload is the request payload.
		"Echo": func(ctx context.Context, unmarshal func(interface{}) error) (interface{}, error) {
			return read(unmarshal)
		},
		// Sleep: payload is a decimal number of milliseconds (ASCII); honours
		// the request deadline (DEADLINE_EXCEEDED) and cancellation.
		"Sleep": func(ctx context.Context, unmarshal func(interface{}) error) (interface{}, error) {
			req, err := read(unmarshal)
			if err != nil {
				return nil, err
			}
			ms, err := strconv.ParseInt(strings.TrimSpace(string(req.b)), 10, 64)
			if err != nil {
				return nil, status.Errorf(codes.InvalidArgument, "sleep: bad duration %q", req.b)
			}
			t := time.NewTimer(time.Duration(ms) * time.Millisecond)
			defer t.Stop()
			select {
			case <-t.C:
				return &rawMsg{b: []byte("slept")}, nil
			case <-ctx.Done():
				return nil, ctx.Err() // ttrpc maps this to DEADLINE_EXCEEDED / CANCELLED
			}
		},
		// Fail: always NOT_FOUND "no such thing".
		"Fail": func(ctx context.Context, unmarshal func(interface{}) error) (interface{}, error) {
			if _, err := read(unmarshal); err != nil {
				return nil, err
			}
			return nil, status.Error(codes.NotFound, "no such thing")
		},
		// Metadata: payload is a key; returns its first incoming value.
		"Metadata": func(ctx context.Context, unmarshal func(interface{}) error) (interface{}, error) {
			req, err := read(unmarshal)
			if err != nil {
				return nil, err
			}
			v, ok := ttrpc.GetMetadataValue(ctx, string(req.b))
			if !ok {
				return nil, status.Errorf(codes.NotFound, "metadata key %q not set", req.b)
			}
			return &rawMsg{b: []byte(v)}, nil
		},
	}
}

func cmdServe(args []string) {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	socket := fs.String("socket", "", "unix socket path to listen on")
	_ = fs.Parse(args)
	if *socket == "" {
		die("serve: -socket is required")
	}
	_ = os.Remove(*socket)
	l, err := net.Listen("unix", *socket)
	if err != nil {
		die("listen: %v", err)
	}
	srv, err := ttrpc.NewServer()
	if err != nil {
		die("server: %v", err)
	}
	srv.Register(EchoService, echoMethods())

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-sigs
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		_ = srv.Close()
	}()

	fmt.Println("READY")
	err = srv.Serve(context.Background(), l)
	_ = os.Remove(*socket)
	if err != nil && !errors.Is(err, ttrpc.ErrServerClosed) {
		die("serve: %v", err)
	}
}

// ---------------------------------------------------------------- call

func dial(socket string) *ttrpc.Client {
	conn, err := net.Dial("unix", socket)
	if err != nil {
		fmt.Fprintf(os.Stderr, "gottrpc: dial %s: %v\n", socket, err)
		os.Exit(1)
	}
	return ttrpc.NewClient(conn)
}

func cmdCall(args []string) {
	var md mdFlags
	fs := flag.NewFlagSet("call", flag.ExitOnError)
	socket := fs.String("socket", "", "unix socket path")
	service := fs.String("service", EchoService, "service name")
	method := fs.String("method", "Echo", "method name")
	payloadHex := fs.String("payload-hex", "", "request payload, hex")
	payloadFile := fs.String("payload-file", "", "request payload, read from a file (overrides -payload-hex)")
	timeoutMs := fs.Int64("timeout-ms", 0, "deadline in ms (0: none)")
	fs.Var(&md, "md", "metadata key=value (repeatable)")
	_ = fs.Parse(args)

	client := dial(*socket)
	defer client.Close()

	ctx := context.Background()
	if len(md) > 0 {
		m := ttrpc.MD{}
		for _, kv := range md {
			m.Append(kv[0], kv[1])
		}
		ctx = ttrpc.WithMetadata(ctx, m)
	}
	if *timeoutMs > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(*timeoutMs)*time.Millisecond)
		defer cancel()
	}
	var resp rawMsg
	err := client.Call(ctx, *service, *method, &rawMsg{b: loadPayload(*payloadHex, *payloadFile)}, &resp)
	st := errStatus(err)
	printJSON(map[string]interface{}{
		"code":        int(st.Code()),
		"message":     st.Message(),
		"payload_hex": hex.EncodeToString(resp.b),
	})
}

// ---------------------------------------------------------------- bench

func percentile(sorted []time.Duration, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(p * float64(len(sorted)-1))
	return float64(sorted[i].Nanoseconds()) / 1e3
}

func cmdBench(args []string) {
	fs := flag.NewFlagSet("bench", flag.ExitOnError)
	socket := fs.String("socket", "", "unix socket path")
	service := fs.String("service", EchoService, "service name")
	method := fs.String("method", "Echo", "method name")
	size := fs.Int("size", 0, "payload size in bytes (zeros)")
	payloadHex := fs.String("payload-hex", "", "payload, hex (overrides -size)")
	payloadFile := fs.String("payload-file", "", "payload, read from a file (overrides -size)")
	conc := fs.Int("concurrency", 1, "concurrent callers on one connection")
	durMs := fs.Int("duration-ms", 1000, "measured duration in ms")
	warmMs := fs.Int("warmup-ms", 100, "unmeasured warm-up in ms")
	timeoutMs := fs.Int64("timeout-ms", 0, "per-call deadline in ms (0: none)")
	_ = fs.Parse(args)
	if *conc < 1 {
		die("bench: -concurrency must be >= 1")
	}

	payload := make([]byte, *size)
	if *payloadHex != "" || *payloadFile != "" {
		payload = loadPayload(*payloadHex, *payloadFile)
	}
	client := dial(*socket)
	defer client.Close()

	run := func(d time.Duration, record bool) ([]time.Duration, int, map[string]int) {
		var (
			mu     sync.Mutex
			lats   []time.Duration
			errs   int
			byCode = map[string]int{}
			wg     sync.WaitGroup
		)
		end := time.Now().Add(d)
		for g := 0; g < *conc; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				local := make([]time.Duration, 0, 4096)
				localErrs := 0
				localCodes := map[string]int{}
				req := &rawMsg{b: payload}
				for time.Now().Before(end) {
					ctx := context.Background()
					var cancel context.CancelFunc = func() {}
					if *timeoutMs > 0 {
						ctx, cancel = context.WithTimeout(ctx, time.Duration(*timeoutMs)*time.Millisecond)
					}
					var resp rawMsg
					t0 := time.Now()
					err := client.Call(ctx, *service, *method, req, &resp)
					lat := time.Since(t0)
					cancel()
					if err != nil {
						localErrs++
						localCodes[errStatus(err).Code().String()]++
						if errors.Is(err, ttrpc.ErrClosed) {
							break
						}
					}
					local = append(local, lat)
				}
				if record {
					mu.Lock()
					lats = append(lats, local...)
					errs += localErrs
					for k, v := range localCodes {
						byCode[k] += v
					}
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		return lats, errs, byCode
	}

	if *warmMs > 0 {
		run(time.Duration(*warmMs)*time.Millisecond, false)
	}
	start := time.Now()
	lats, errs, byCode := run(time.Duration(*durMs)*time.Millisecond, true)
	elapsed := time.Since(start).Seconds()
	sort.Slice(lats, func(i, j int) bool { return lats[i] < lats[j] })
	var sum time.Duration
	for _, l := range lats {
		sum += l
	}
	mean := 0.0
	if len(lats) > 0 {
		mean = float64(sum.Nanoseconds()) / float64(len(lats)) / 1e3
	}
	printJSON(map[string]interface{}{
		"calls":          len(lats),
		"calls_per_s":    float64(len(lats)) / elapsed,
		"p50_us":         percentile(lats, 0.50),
		"p99_us":         percentile(lats, 0.99),
		"mean_us":        mean,
		"max_us":         percentile(lats, 1.0),
		"errors":         errs,
		"errors_by_code": byCode,
		"size":           len(payload),
		"concurrency":    *conc,
		"elapsed_s":      elapsed,
	})
}

// ---------------------------------------------------------------- golden vectors

func cmdRawReq(args []string) {
	var md mdFlags
	fs := flag.NewFlagSet("rawreq", flag.ExitOnError)
	service := fs.String("service", EchoService, "service name")
	method := fs.String("method", "Echo", "method name")
	payloadHex := fs.String("payload-hex", "", "payload, hex")
	timeoutNano := fs.Int64("timeout-nano", 0, "Request.timeout_nano")
	fs.Var(&md, "md", "metadata key=value (repeatable, kept in order)")
	_ = fs.Parse(args)

	req := &ttrpc.Request{
		Service:     *service,
		Method:      *method,
		Payload:     decodeHex(*payloadHex),
		TimeoutNano: *timeoutNano,
	}
	for _, kv := range md {
		req.Metadata = append(req.Metadata, &ttrpc.KeyValue{Key: kv[0], Value: kv[1]})
	}
	// The ttrpc codec is proto.Marshal for any proto.Message.
	b, err := proto.Marshal(req)
	if err != nil {
		die("marshal: %v", err)
	}
	fmt.Println(hex.EncodeToString(b))
}

func cmdRawResp(args []string) {
	fs := flag.NewFlagSet("rawresp", flag.ExitOnError)
	code := fs.Int("code", 0, "status code (0: no status field set)")
	message := fs.String("message", "", "status message")
	payloadHex := fs.String("payload-hex", "", "payload, hex")
	_ = fs.Parse(args)

	resp := &ttrpc.Response{Payload: decodeHex(*payloadHex)}
	if *code != 0 || *message != "" {
		resp.Status = &spb.Status{Code: int32(*code), Message: *message}
	}
	b, err := proto.Marshal(resp)
	if err != nil {
		die("marshal: %v", err)
	}
	fmt.Println(hex.EncodeToString(b))
}

func main() {
	if len(os.Args) < 2 {
		die("usage: gottrpc serve|call|bench|rawreq|rawresp [flags]")
	}
	args := os.Args[2:]
	switch os.Args[1] {
	case "serve":
		cmdServe(args)
	case "call":
		cmdCall(args)
	case "bench":
		cmdBench(args)
	case "rawreq":
		cmdRawReq(args)
	case "rawresp":
		cmdRawResp(args)
	default:
		die("unknown subcommand %q", os.Args[1])
	}
}
