/** The web client's entry point: the stylesheet and the app, mounted on #app. */
import "./styles.css"
import { render } from "preact"
import { App } from "./App.tsx"

render(<App />, document.getElementById("app")!)
