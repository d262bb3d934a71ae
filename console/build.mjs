// Builds the console into dist/ (served by `flowstate serve` on its HTTP port): one bundle of
// src/main.tsx (with the generated client from ../clients/typescript/src/gen), the stylesheet and
// index.html. Run by `make setup` (npm run build); nothing is fetched at run time.
import { build } from "esbuild";
import { copyFileSync, mkdirSync, rmSync } from "node:fs";
import { fileURLToPath } from "node:url";

const here = fileURLToPath(new URL(".", import.meta.url));
// The generated client imports the protobuf and Connect runtimes; resolve them from the
// console's own node_modules, so the bundle holds one copy of each (one ConnectError class).
const oneRuntime = {
  name: "one-runtime",
  setup(build) {
    build.onResolve({ filter: /^@(bufbuild\/protobuf|connectrpc\/connect)(\/|$)/ }, (args) => {
      if (args.resolveDir === here || args.pluginData === "one-runtime") return undefined;
      return build.resolve(args.path, { kind: args.kind, resolveDir: here, pluginData: "one-runtime" });
    });
  },
};

rmSync("dist", { recursive: true, force: true });
mkdirSync("dist");
await build({
  entryPoints: ["src/main.tsx"],
  bundle: true,
  outfile: "dist/app.js",
  format: "esm",
  target: "es2022",
  minify: true,
  sourcemap: true,
  legalComments: "linked",
  jsx: "automatic",
  jsxImportSource: "preact",
  plugins: [oneRuntime],
  logLevel: "warning",
});
copyFileSync("src/index.html", "dist/index.html");
copyFileSync("src/style.css", "dist/style.css");
console.log("console: built dist/ (app.js, style.css, index.html)");
