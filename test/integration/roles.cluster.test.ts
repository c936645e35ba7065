import { rolesSuite } from "./roles.suite.ts"

rolesSuite("cluster")
