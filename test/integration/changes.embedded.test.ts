import { changesSuite } from "./changes.suite.ts"

changesSuite("embedded")
