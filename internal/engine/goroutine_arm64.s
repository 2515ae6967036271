#include "textflag.h"

// func curG() uintptr: the g of the calling goroutine, which arm64 keeps
// in its g register (R28).
TEXT ·curG(SB), NOSPLIT, $0-8
	MOVD g, R0
	MOVD R0, ret+0(FP)
	RET
