#!/usr/bin/env bash
# Fetch the JavaScript the built book needs (MathJax 3, RequireJS, the ipywidgets HTML manager)
# from the npm registry into book/_static/offline/ (git-ignored). When these files are present
# the book uses them and renders without a CDN, also from file://; otherwise it falls back to
# the CDN. Needs npm. Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."

MATHJAX=mathjax@3.2.2
REQUIREJS=requirejs@2.3.8
HTML_MANAGER=@jupyter-widgets/html-manager@1.0.15

vendor=book/_static/offline
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

unpack() {  # unpack <npm spec> into $work/<name>
  local spec=$1 name=$2
  (cd "$work" && npm pack --silent "$spec" > "$name.tgz.name")
  mkdir -p "$work/$name"
  tar -xzf "$work/$(cat "$work/$name.tgz.name")" -C "$work/$name"
}

unpack "$MATHJAX" mathjax
unpack "$REQUIREJS" requirejs
unpack "$HTML_MANAGER" html-manager

rm -rf "$vendor.tmp" && mkdir -p "$vendor.tmp"
# MathJax: the combined TeX/MathML -> CommonHTML component, plus the pieces it loads on demand
# (TeX extensions, fonts, the context menu, accessibility); the SVG and speech builds are left out.
mkdir -p "$vendor.tmp/mathjax"
es5="$work/mathjax/package/es5"
cp "$es5/tex-mml-chtml.js" "$vendor.tmp/mathjax/"
cp -r "$es5/input" "$es5/output" "$es5/ui" "$es5/a11y" "$es5/adaptors" "$vendor.tmp/mathjax/"
rm -rf "$vendor.tmp/mathjax/output/svg"*
cp "$work/requirejs/package/require.js" "$vendor.tmp/require.js"
# The widget renderer and the icon fonts it finds next to itself (see book/_static/widgets-offline.js).
mkdir -p "$vendor.tmp/html-manager"
dist="$work/html-manager/package/dist"
cp "$dist/embed-amd.js" "$dist"/*.woff2 "$dist"/*.woff "$dist"/*.ttf "$dist"/*.eot "$dist"/*.svg \
  "$vendor.tmp/html-manager/"
rm -rf "$vendor" && mv "$vendor.tmp" "$vendor"
echo "offline assets in $vendor: $MATHJAX, $REQUIREJS, $HTML_MANAGER"
