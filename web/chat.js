/* OmniPath chat: "Ask about this region" on the slide viewer (web/viewer/viewer.js).
 *
 * Runs in the region component's js_on_load (web/chat_app.py prepends this file), so it uses
 * only the viewer's public API: window.omnipathViewer.viewer (the OpenSeadragon viewer).
 *
 *   window.omnipathChat.bindRegionControl(element, props, trigger, watch)
 *       wires the component's "Draw a region" / "Clear" buttons; the drawn rectangle becomes
 *       the component's value, JSON {x, y, w, h} in level-0 pixels ("" = none), and a
 *       "change" event is triggered so Python sees it with the next question.
 *   window.omnipathChat.startDrawing(onDone)   onDone(l0Rect | null)
 *   window.omnipathChat.showRegion(l0Rect | null)
 */
(function () {
  "use strict";
  if (window.omnipathChat) return; // loaded once per page

  const MIN_DRAG_PX = 4;
  let regionNode = null;
  let drawing = null;

  function osd() {
    const api = window.omnipathViewer;
    return api && api.viewer ? api.viewer : null;
  }

  function slideItem(viewer) {
    return viewer ? viewer.world.getItemAt(0) : null;
  }

  function makeNode() {
    const node = document.createElement("div");
    node.className = "oc-region-overlay";
    node.style.border = "2px solid #00a86b";
    node.style.background = "rgba(0, 168, 107, 0.12)";
    node.style.boxSizing = "border-box";
    node.style.pointerEvents = "none";
    return node;
  }

  function viewportRect(viewer, a, b) {
    const OSD = window.OpenSeadragon;
    return new OSD.Rect(Math.min(a.x, b.x), Math.min(a.y, b.y), Math.abs(a.x - b.x), Math.abs(a.y - b.y));
  }

  let currentRect = null;

  function keepAcrossRedraws(viewer) {
    // The viewer clears every overlay when it redraws its layers; put the region back.
    if (viewer.__omnipathRegionHook) return;
    viewer.__omnipathRegionHook = true;
    viewer.addHandler("clear-overlay", () => {
      if (currentRect) setTimeout(() => showRegion(currentRect), 0);
    });
  }

  function showRegion(l0Rect) {
    const viewer = osd();
    if (regionNode && viewer) viewer.removeOverlay(regionNode);
    regionNode = null;
    currentRect = l0Rect || null;
    const item = slideItem(viewer);
    if (!l0Rect || !item) return;
    keepAcrossRedraws(viewer);
    regionNode = makeNode();
    viewer.addOverlay({
      element: regionNode,
      location: item.imageToViewportRectangle(l0Rect.x, l0Rect.y, l0Rect.w, l0Rect.h),
    });
  }

  function stopDrawing(viewer) {
    if (!drawing) return;
    drawing.tracker.destroy();
    if (viewer) {
      viewer.setMouseNavEnabled(true);
      viewer.container.style.cursor = "";
    }
    drawing = null;
  }

  function startDrawing(onDone) {
    const viewer = osd();
    const item = slideItem(viewer);
    if (!item) {
      onDone(null, "Open a slide first.");
      return;
    }
    stopDrawing(viewer);
    showRegion(null);
    viewer.setMouseNavEnabled(false); // a drag draws instead of panning
    viewer.container.style.cursor = "crosshair";
    const state = { start: null, node: null, tracker: null };
    state.tracker = new window.OpenSeadragon.MouseTracker({
      element: viewer.canvas,
      pressHandler: (event) => {
        state.start = event.position;
        state.startVp = viewer.viewport.pointFromPixel(event.position);
        state.node = makeNode();
        viewer.addOverlay({ element: state.node, location: viewportRect(viewer, state.startVp, state.startVp) });
      },
      dragHandler: (event) => {
        if (!state.start) return;
        const here = viewer.viewport.pointFromPixel(event.position);
        viewer.updateOverlay(state.node, viewportRect(viewer, state.startVp, here));
      },
      releaseHandler: (event) => {
        if (!state.start) return;
        const end = event.position;
        viewer.removeOverlay(state.node);
        const dragged = Math.abs(end.x - state.start.x) >= MIN_DRAG_PX && Math.abs(end.y - state.start.y) >= MIN_DRAG_PX;
        let rect = null;
        if (dragged) {
          const a = item.viewportToImageCoordinates(state.startVp);
          const b = item.viewportToImageCoordinates(viewer.viewport.pointFromPixel(end));
          // Clipped here only so that the label names the pixels asked about; the server
          // clips again (web/question.py), whatever a client sends.
          const size = item.getContentSize();
          const x0 = Math.max(0, Math.round(Math.min(a.x, b.x)));
          const y0 = Math.max(0, Math.round(Math.min(a.y, b.y)));
          const x1 = Math.min(size.x, Math.round(Math.max(a.x, b.x)));
          const y1 = Math.min(size.y, Math.round(Math.max(a.y, b.y)));
          if (x1 - x0 >= 1 && y1 - y0 >= 1) rect = { x: x0, y: y0, w: x1 - x0, h: y1 - y0 };
        }
        stopDrawing(viewer);
        showRegion(rect);
        onDone(rect, rect ? null : "The region is empty or outside the slide; drag a rectangle.");
      },
    });
    drawing = state;
  }

  function describe(rect) {
    return "Next question is about the region x " + rect.x + ", y " + rect.y + " (" + rect.w + " × " + rect.h + " px).";
  }

  function bindRegionControl(element, props, trigger, watch) {
    const label = () => element.querySelector(".oc-region-label");
    const render = () => {
      let rect = null;
      try { rect = props.value ? JSON.parse(props.value) : null; } catch (e) { rect = null; }
      const node = label();
      if (node) node.textContent = rect ? describe(rect) : "No region: questions are about the whole slide.";
      if (!rect) showRegion(null);
    };
    const setValue = (rect) => {
      props.value = rect ? JSON.stringify(rect) : "";
      trigger("change");
      render();
      if (rect) showRegion(rect);
    };
    // Delegated: the template re-renders when the value changes, the element stays.
    element.addEventListener("click", (event) => {
      const target = event.target;
      if (target.closest(".oc-draw")) {
        const node = label();
        if (node) node.textContent = "Drag a rectangle on the slide…";
        startDrawing((rect, problem) => {
          if (rect) setValue(rect);
          else { render(); const n = label(); if (n && problem) n.textContent = problem; }
        });
      } else if (target.closest(".oc-clear")) {
        stopDrawing(osd());
        setValue(null);
      }
    });
    if (watch) watch("value", render);
    render();
  }

  window.omnipathChat = { bindRegionControl, startDrawing, showRegion };
})();
