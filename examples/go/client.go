// A Go caller of scout: one Execute, one Stream, one ListHosts. Its stubs are generated
// from protos/ by build.sh, with Debian's grpc-go and protobuf packages, so none are committed.
//
//	./build.sh DIR && DIR/scout-example [ADDRESS [HOST]]   (defaults: 127.0.0.1:50051, "local")
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	scoutv1 "scout/v1"
)

// call gives each call a deadline and names its host in metadata: proxies in front of
// several scout replicas route by it, so that each host's warm SSH connections live on one.
func call(host string) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	return metadata.AppendToOutgoingContext(ctx, "x-scout-host", host), cancel
}

// execute runs a command and waits for its output and exit status, in one response.
// A non-zero exit is an answer, not an error; errors mean scout could not run it.
func execute(client scoutv1.ExecServiceClient, host, command string) (*scoutv1.ExecuteResponse, error) {
	ctx, cancel := call(host)
	defer cancel()
	return client.Execute(ctx, &scoutv1.ExecuteRequest{
		Host: host, Command: command, Timeout: durationpb.New(10 * time.Second),
	})
}

// stream gets output as it is produced. Response headers mean "the command started":
// write stdin after them, then half-close (CloseSend), which is EOF for its stdin.
func stream(client scoutv1.ExecServiceClient, host, command, input string) (*scoutv1.ExitStatus, error) {
	ctx, cancel := call(host)
	defer cancel()
	calls, err := client.Stream(ctx)
	if err != nil {
		return nil, err
	}
	start := &scoutv1.ExecuteRequest{Host: host, Command: command, Timeout: durationpb.New(10 * time.Second)}
	if err := calls.Send(&scoutv1.StreamRequest{Event: &scoutv1.StreamRequest_Start{Start: start}}); err != nil && err != io.EOF {
		return nil, err // io.EOF: the call has ended, and Recv below says how
	}
	if _, err := calls.Header(); err == nil {
		if err := calls.Send(&scoutv1.StreamRequest{Event: &scoutv1.StreamRequest_Stdin{Stdin: []byte(input)}}); err != nil && err != io.EOF {
			return nil, err
		}
		if err := calls.CloseSend(); err != nil {
			return nil, err
		}
	}
	var exit *scoutv1.ExitStatus
	for {
		message, err := calls.Recv()
		if err == io.EOF {
			return exit, nil
		}
		if err != nil {
			return nil, err
		}
		switch event := message.Event.(type) {
		case *scoutv1.StreamResponse_Stdout:
			os.Stdout.Write(event.Stdout)
		case *scoutv1.StreamResponse_Stderr:
			os.Stderr.Write(event.Stderr)
		case *scoutv1.StreamResponse_Exit:
			exit = event.Exit
		}
	}
}

// listHosts lists the inventory, with labels and the pool's view of each host.
func listHosts(client scoutv1.ExecServiceClient, host string) ([]*scoutv1.Host, error) {
	ctx, cancel := call(host)
	defer cancel()
	response, err := client.ListHosts(ctx, &scoutv1.ListHostsRequest{})
	return response.GetHosts(), err
}

func run(client scoutv1.ExecServiceClient, host string) error {
	result, err := execute(client, host, `echo "Execute ran on $(uname -s)"; exit 3`)
	if err != nil {
		return err
	}
	os.Stdout.Write(result.Stdout) // bytes, as the command wrote them
	fmt.Printf("Execute: exit code %d\n", result.ExitCode)

	exit, err := stream(client, host, "tr a-z A-Z", "hello from go\n")
	if err != nil {
		return err
	}
	fmt.Printf("Stream: exit code %d, %d bytes of stdout\n", exit.GetExitCode(), exit.GetStdoutBytes())

	hosts, err := listHosts(client, host)
	if err != nil {
		return err
	}
	names := make([]string, len(hosts))
	for i, h := range hosts {
		names[i] = fmt.Sprintf("%s (%d open)", h.Name, h.ConnectionsOpen)
	}
	fmt.Printf("ListHosts: %s\n", strings.Join(names, ", "))
	return nil
}

func main() {
	address, host := "127.0.0.1:50051", "local"
	if len(os.Args) > 1 {
		address = os.Args[1]
	}
	if len(os.Args) > 2 {
		host = os.Args[2]
	}
	conn, err := grpc.Dial(address, grpc.WithInsecure()) // connects lazily, on the first call
	if err == nil {
		err = run(scoutv1.NewExecServiceClient(conn), host)
		conn.Close()
	}
	if err != nil {
		s := status.Convert(err) // an error that is not a gRPC status reads as Unknown
		fmt.Fprintf(os.Stderr, "scout: %s: %s\n", s.Code(), s.Message())
		os.Exit(1)
	}
}
