import { searchLimitsSuite } from "./searchLimits.suite.ts"

searchLimitsSuite("cluster")
