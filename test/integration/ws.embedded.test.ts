import { wsSuite } from "./ws.suite.ts"

wsSuite("embedded")
