package main

import "fmt"

func main() { fmt.Println("hello from a multi-stage kiln build") }
