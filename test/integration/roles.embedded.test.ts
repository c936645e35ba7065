import { rolesSuite } from "./roles.suite.ts"

rolesSuite("embedded")
