// unixsock: a unix socket server and client for the tests (the busybox image has none).
//
//	unixsock serve PATH   listen on PATH; answer each connection with one line
//	unixsock dial PATH    connect to PATH and print what it answers
package main

import (
	"fmt"
	"io"
	"net"
	"os"
)

func fail(err error) {
	fmt.Fprintln(os.Stderr, "unixsock:", err)
	os.Exit(1)
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: unixsock serve|dial PATH")
		os.Exit(2)
	}
	path := os.Args[2]
	switch os.Args[1] {
	case "serve":
		os.Remove(path)
		listener, err := net.Listen("unix", path)
		if err != nil {
			fail(err)
		}
		for {
			conn, err := listener.Accept()
			if err != nil {
				fail(err)
			}
			fmt.Fprintf(conn, "hello over %s\n", path)
			conn.Close()
		}
	case "dial":
		conn, err := net.Dial("unix", path)
		if err != nil {
			fail(err)
		}
		if _, err := io.Copy(os.Stdout, conn); err != nil {
			fail(err)
		}
	default:
		fmt.Fprintln(os.Stderr, "usage: unixsock serve|dial PATH")
		os.Exit(2)
	}
}
