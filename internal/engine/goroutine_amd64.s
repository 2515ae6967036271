#include "textflag.h"

// func curG() uintptr: the g of the calling goroutine, which the runtime
// keeps in thread-local storage.
TEXT ·curG(SB), NOSPLIT, $0-8
	MOVQ (TLS), AX
	MOVQ AX, ret+0(FP)
	RET
