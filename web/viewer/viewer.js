/* OmniPath slide viewer: OpenSeadragon plus a scale bar, magnification, cursor position in µm
 * and an overlay layer (numbered rectangles and mask images in level-0 pixels).
 *
 * API (one viewer per page):
 *   window.omnipathViewer.mount(hostElement)      build the viewer inside hostElement
 *   window.omnipathViewer.open(dziUrl, meta)      meta: {l0_width, l0_height, mpp_x, mpp_y,
 *                                                        objective_power, slide_id}
 *   window.omnipathViewer.setLayers(layers)       layers: {regions: [...], boxes: [...], masks: [...]}
 *       regions/boxes item: {l0_rect: {x, y, w, h}, label?: string}
 *       masks item:         {l0_rect: {x, y, w, h}, src: url or data: URL of an image, label?}
 *   window.omnipathViewer.setLayerVisible(name, visible)
 *   window.omnipathViewer.zoomTo(l0Rect)          fit {x, y, w, h} (level-0 px) in the view
 *   window.omnipathViewer.applyState(state)       {dzi_url, meta, layers, zoom_to} (what Python sends)
 *   window.omnipathViewer.viewer                  the OpenSeadragon.Viewer (tests, debugging)
 */
(function () {
  "use strict";

  const LAYER_NAMES = ["regions", "boxes", "masks"];
  const LAYER_TITLES = { regions: "Regions read", boxes: "Boxes", masks: "Masks" };
  const SCALE_BAR_TARGET_PX = 120;

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function scriptBase() {
    // The folder this script was served from, to find OpenSeadragon's button images.
    const script = document.currentScript ||
      document.querySelector('script[src*="omnipath-viewer/viewer.js"]');
    const src = script ? script.src : "/omnipath-viewer/viewer.js";
    return src.slice(0, src.lastIndexOf("/") + 1);
  }
  const BASE = scriptBase();

  function niceLength(raw) {
    // The largest 1, 2 or 5 × 10^k not above raw.
    const power = Math.pow(10, Math.floor(Math.log10(raw)));
    for (const step of [5, 2, 1]) {
      if (step * power <= raw) return step * power;
    }
    return power;
  }

  function formatMicrons(um) {
    if (um >= 1000) return (um / 1000).toLocaleString(undefined, { maximumFractionDigits: 2 }) + " mm";
    return um.toLocaleString(undefined, { maximumFractionDigits: 2 }) + " µm";
  }

  class SlideViewer {
    constructor(host) {
      this.host = host;
      this.meta = null;
      this.dziUrl = null;
      this.layers = { regions: [], boxes: [], masks: [] };
      this.visible = { regions: true, boxes: true, masks: true };
      this.overlayCount = 0;
      this.trackers = [];
      this.pendingZoom = null; // a zoomTo that arrived before the slide finished opening

      host.innerHTML = "";
      host.classList.add("ov-root");
      this.canvasHost = el("div", "ov-canvas");
      this.canvasHost.id = "ov-canvas-" + Math.random().toString(36).slice(2);
      host.appendChild(this.canvasHost);

      this.toolbar = el("div", "ov-toolbar");
      this.toggles = {};
      for (const name of LAYER_NAMES) {
        const label = el("label", "ov-toggle ov-toggle-" + name);
        const box = el("input");
        box.type = "checkbox";
        box.checked = true;
        box.dataset.layer = name;
        box.addEventListener("change", () => this.setLayerVisible(name, box.checked));
        const count = el("span", "ov-count", "0");
        label.append(box, el("span", "ov-swatch ov-swatch-" + name), " " + LAYER_TITLES[name] + " ", count);
        this.toggles[name] = { box, count };
        this.toolbar.appendChild(label);
      }
      host.appendChild(this.toolbar);

      this.status = el("div", "ov-status");
      this.magnification = el("span", "ov-magnification", "");
      this.cursor = el("span", "ov-cursor", "");
      this.status.append(this.magnification, this.cursor);
      host.appendChild(this.status);

      this.scaleBar = el("div", "ov-scalebar");
      this.scaleBarLine = el("div", "ov-scalebar-line");
      this.scaleBarLabel = el("div", "ov-scalebar-label");
      this.scaleBar.append(this.scaleBarLabel, this.scaleBarLine);
      host.appendChild(this.scaleBar);

      this.message = el("div", "ov-message", "No slide open.");
      host.appendChild(this.message);

      this.viewer = OpenSeadragon({
        id: this.canvasHost.id,
        prefixUrl: BASE + "openseadragon/images/",
        drawer: "canvas",
        showNavigator: true,
        navigatorPosition: "BOTTOM_RIGHT",
        showRotationControl: false,
        crossOriginPolicy: false,
        maxZoomPixelRatio: 2,
        visibilityRatio: 0.5,
        imageLoaderLimit: 6,
        timeout: 60000,
      });
      const update = () => this.updateReadouts();
      this.viewer.addHandler("open", () => {
        this.message.style.display = "none";
        this.drawLayers();
        if (this.pendingZoom) {
          this.zoomTo(this.pendingZoom);
          this.pendingZoom = null;
        }
        update();
      });
      this.viewer.addHandler("open-failed", (event) => {
        this.message.textContent = "The slide could not be loaded: " + (event.message || "unknown error");
        this.message.style.display = "";
      });
      // A click on an overlay zooms to it (its own tracker); keep OpenSeadragon's click-to-zoom
      // from also acting on the same click.
      this.viewer.addHandler("canvas-click", (event) => {
        const target = event.originalEvent && event.originalEvent.target;
        if (target && target.closest && target.closest(".ov-overlay")) event.preventDefaultAction = true;
      });
      this.viewer.addHandler("animation", update);
      this.viewer.addHandler("resize", update);
      this.viewer.addHandler("zoom", update);

      this.cursorTracker = new OpenSeadragon.MouseTracker({
        element: this.viewer.container,
        moveHandler: (event) => this.updateCursor(event.position),
        leaveHandler: () => { this.cursor.textContent = ""; },
      });
    }

    open(dziUrl, meta) {
      this.dziUrl = dziUrl;
      this.pendingZoom = null;
      this.meta = meta || null;
      this.message.textContent = "Loading the slide…";
      this.message.style.display = "";
      this.viewer.open(dziUrl);
    }

    // Screen (CSS) pixels per level-0 pixel at the current zoom.
    screenPerL0() {
      const item = this.viewer.world.getItemAt(0);
      if (!item) return null;
      return item.viewportToImageZoom(this.viewer.viewport.getZoom(true));
    }

    micronsPerPixel() {
      const meta = this.meta;
      if (!meta || !meta.mpp_x) return null;
      return meta.mpp_y ? (meta.mpp_x + meta.mpp_y) / 2 : meta.mpp_x;
    }

    updateReadouts() {
      const zoom = this.screenPerL0();
      if (zoom === null) return;
      const mpp = this.micronsPerPixel();
      // Magnification: the objective's when the slide states it, else 10 µm ÷ mpp (40× ≈ 0.25 µm/px).
      let magnification = null;
      let derived = false;
      if (this.meta && this.meta.objective_power) {
        magnification = this.meta.objective_power * zoom;
      } else if (mpp) {
        magnification = (10 / mpp) * zoom;
        derived = true;
      }
      this.magnification.textContent = magnification === null
        ? "zoom " + zoom.toFixed(3) + "×"
        : (derived ? "≈" : "") + (magnification >= 10 ? magnification.toFixed(1) : magnification.toFixed(2)) + "×";

      if (!mpp) {
        this.scaleBar.style.display = "none";
        return;
      }
      const micronsPerScreenPx = mpp / zoom;
      const length = niceLength(SCALE_BAR_TARGET_PX * micronsPerScreenPx);
      this.scaleBar.style.display = "";
      this.scaleBarLine.style.width = (length / micronsPerScreenPx).toFixed(1) + "px";
      this.scaleBarLabel.textContent = formatMicrons(length);
    }

    updateCursor(position) {
      const item = this.viewer.world.getItemAt(0);
      if (!item) return;
      const point = item.viewportToImageCoordinates(this.viewer.viewport.pointFromPixel(position));
      const mpp = this.micronsPerPixel();
      if (mpp) {
        const mppY = (this.meta && this.meta.mpp_y) || mpp;
        const mppX = (this.meta && this.meta.mpp_x) || mpp;
        this.cursor.textContent = "x " + formatMicrons(point.x * mppX) + ", y " + formatMicrons(point.y * mppY);
      } else {
        this.cursor.textContent = "x " + Math.round(point.x) + " px, y " + Math.round(point.y) + " px";
      }
    }

    l0ToViewport(rect) {
      const item = this.viewer.world.getItemAt(0);
      if (!item) return null;
      return item.imageToViewportRectangle(rect.x, rect.y, rect.w, rect.h);
    }

    zoomTo(rect) {
      if (!rect) return;
      if (!this.viewer.world.getItemAt(0)) {
        this.pendingZoom = rect;
        return;
      }
      const margin = 0.1;
      const padded = {
        x: rect.x - rect.w * margin,
        y: rect.y - rect.h * margin,
        w: rect.w * (1 + 2 * margin),
        h: rect.h * (1 + 2 * margin),
      };
      const bounds = this.l0ToViewport(padded);
      if (bounds) this.viewer.viewport.fitBounds(bounds);
    }

    setLayers(layers) {
      layers = layers || {};
      this.layers = {
        regions: Array.isArray(layers.regions) ? layers.regions : [],
        boxes: Array.isArray(layers.boxes) ? layers.boxes : [],
        masks: Array.isArray(layers.masks) ? layers.masks : [],
      };
      this.drawLayers();
    }

    setLayerVisible(name, visible) {
      if (!(name in this.visible)) return;
      this.visible[name] = !!visible;
      this.toggles[name].box.checked = !!visible;
      for (const node of this.host.querySelectorAll(".ov-overlay-" + name)) {
        node.style.display = visible ? "" : "none";
      }
    }

    clearOverlays() {
      for (const tracker of this.trackers) tracker.destroy();
      this.trackers = [];
      this.viewer.clearOverlays();
      this.overlayCount = 0;
    }

    drawLayers() {
      this.clearOverlays();
      for (const name of LAYER_NAMES) this.toggles[name].count.textContent = String(this.layers[name].length);
      if (!this.viewer.world.getItemAt(0)) return; // drawn again on "open"
      for (const name of LAYER_NAMES) {
        this.layers[name].forEach((item, index) => this.addOverlay(name, item, index));
      }
    }

    addOverlay(name, item, index) {
      const rect = item && item.l0_rect;
      if (!rect || !(rect.w > 0) || !(rect.h > 0)) return;
      const location = this.l0ToViewport(rect);
      const node = el("div", "ov-overlay ov-overlay-" + name);
      node.dataset.layer = name;
      node.dataset.index = String(index);
      node.title = (item.label ? item.label + " — " : "") + "click to zoom here";
      if (name === "masks") {
        const image = el("img", "ov-mask-image");
        image.src = item.src;
        image.alt = item.label || "mask " + (index + 1);
        image.draggable = false;
        node.appendChild(image);
      }
      node.appendChild(el("span", "ov-badge", String(item.number !== undefined ? item.number : index + 1)));
      if (!this.visible[name]) node.style.display = "none";
      this.viewer.addOverlay({ element: node, location: location });
      // A tracker per overlay: OpenSeadragon's own tracker would treat the click as a pan.
      this.trackers.push(new OpenSeadragon.MouseTracker({
        element: node,
        clickHandler: (event) => {
          if (event.quick) this.zoomTo(rect);
        },
      }));
      this.overlayCount += 1;
    }

    applyState(state) {
      if (!state) return;
      if (typeof state === "string") {
        if (!state.trim()) return;
        state = JSON.parse(state);
      }
      if (state.dzi_url && state.dzi_url !== this.dziUrl) {
        this.open(state.dzi_url, state.meta);
      } else if (state.meta) {
        this.meta = state.meta;
        this.updateReadouts();
      }
      if (state.layers) this.setLayers(state.layers);
      if (state.zoom_to) this.zoomTo(state.zoom_to);
    }
  }

  const api = {
    instance: null,
    get viewer() { return this.instance ? this.instance.viewer : null; },
    mount(host) {
      if (this.instance && this.instance.host === host) return this.instance;
      if (this.instance) this.instance.viewer.destroy();
      this.instance = new SlideViewer(host);
      return this.instance;
    },
    open(dziUrl, meta) { this.instance.open(dziUrl, meta); },
    setLayers(layers) { this.instance.setLayers(layers); },
    setLayerVisible(name, visible) { this.instance.setLayerVisible(name, visible); },
    zoomTo(l0Rect) { this.instance.zoomTo(l0Rect); },
    applyState(state) { this.instance.applyState(state); },
  };
  window.omnipathViewer = api;
})();
