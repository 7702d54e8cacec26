// Bundles the UI into OUT_DIR (argv[2], default ./dist): index.html plus assets/ with content-hashed names.
// Everything the page needs is inside the bundle: no CDN, no web font, no remote URL.
import { build } from "esbuild";
import { copyFileSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { basename, join, resolve } from "node:path";

const here = new URL(".", import.meta.url).pathname;
const outDir = resolve(process.argv[2] ?? join(here, "dist"));
const assetsDir = join(outDir, "assets");
rmSync(outDir, { recursive: true, force: true });
mkdirSync(assetsDir, { recursive: true });

const result = await build({
  entryPoints: [join(here, "src/main.jsx")],
  bundle: true,
  minify: true,
  format: "esm",
  target: ["es2020"],
  jsx: "automatic",
  jsxImportSource: "preact",
  entryNames: "[name]-[hash]",
  outdir: assetsDir,
  metafile: true,
  legalComments: "eof",
  logLevel: "warning",
});

const outputs = Object.keys(result.metafile.outputs).map((path) => basename(path));
const script = outputs.find((name) => name.endsWith(".js"));
const style = outputs.find((name) => name.endsWith(".css"));
const page = readFileSync(join(here, "src/index.html"), "utf8")
  .replace("{{script}}", `assets/${script}`)
  .replace("{{style}}", `assets/${style}`);
writeFileSync(join(outDir, "index.html"), page);
// The licenses of what the bundle contains ship beside it.
const licensesDir = join(outDir, "licenses");
mkdirSync(licensesDir);
for (const name of Object.keys(JSON.parse(readFileSync(join(here, "package.json"), "utf8")).dependencies)) {
  copyFileSync(join(here, "node_modules", name, "LICENSE"), join(licensesDir, `${name}.txt`));
}
console.log(`cairn ui: ${outputs.join(", ")} -> ${outDir}`);
