"""Explore the latent space by hand: click in a 2-d view of the test codes, and the AE and the VAE decode that point.

    python explore.py --data-dir data               # a window over results/ae.pt, vae.pt (and cvae.pt if there)
    python explore.py --save explore.png            # no window: the same view, written to a PNG

The left panels show each model's test codes in 2-d, coloured by digit: z0 against z1, or the codes'
top two principal directions (the view buttons). Click or drag anywhere: that point becomes a z for
each model, and the right panels show what each decoder makes of it. With a conditional VAE
(python main.py --cvae), the label buttons decode the point as any digit.

How a 2-d point becomes a 20-d z: the click sets the view's two coordinates; every other coordinate
sits at 0, the centre of the prior N(0, I), where sampling draws z, or (the other button) at the
model's test codes' mean, the centre of its data. Around 0 the VAE decodes digits and the AE, whose
codes lie elsewhere, decodes smudges: why z ~ N(0, I) samples one and not the other. Around its codes'
mean the AE decodes digits too. The sliders move z along the next three directions, in standard
deviations of the prior or of the codes.
"""
import argparse

import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.transforms import Bbox
from matplotlib.widgets import RadioButtons, Slider

import evaluate
import figures
import metrics
import train

SLIDERS = 3
VIEWS = {"z": "z0 and z1", "pca": "top two principal directions"}
AROUND = {"prior": "others at 0, the prior's centre", "codes": "others at the codes' mean"}
HOW_Z_IS_MADE = ("A point sets the view's two coordinates of z. The others sit at 0, the centre of N(0, I),\n"
                 "where sampling draws z (the AE's codes lie elsewhere), or at the model's test codes' mean, the\n"
                 "centre of its data. The sliders move z from there along the next directions, in standard\n"
                 "deviations of the prior or of the codes.")


class LatentView:
    """One model's codes seen in a basis of latent space: z = origin + basis @ coordinates.

    "z": the basis is the identity, so the coordinates are z itself; "pca": the basis holds the codes'
    principal directions and the origin is their mean. A 2-d point (u, v) sets the first two coordinates;
    the others are those of z = 0 ("prior") or of the codes' mean ("codes"), each moved by steps[k]
    standard deviations of the prior (1) or of the codes."""

    def __init__(self, codes, view):
        codes = codes.detach().cpu().double()
        mean, directions, _ = metrics.principal_directions(codes)
        self.origin = mean if view == "pca" else torch.zeros_like(mean)
        self.basis = directions if view == "pca" else torch.eye(len(mean), dtype=mean.dtype)
        coordinates = (codes - self.origin) @ self.basis
        self.points = coordinates[:, :2]
        self.centres = {"prior": -self.origin @ self.basis, "codes": coordinates.mean(0)}
        self.stds = {"prior": torch.ones_like(mean), "codes": coordinates.std(0)}
        self.names = [f"z{i}" if view == "z" else f"direction {i + 1}" for i in range(len(mean))]

    def latent(self, point, steps, around):
        """The z of a 2-d point, the other coordinates around "prior" or "codes", the next len(steps) of
        them moved by steps standard deviations."""
        coordinates = self.centres[around].clone()
        coordinates[:2] = torch.tensor(point, dtype=coordinates.dtype)
        moved = slice(2, 2 + len(steps))
        coordinates[moved] += torch.tensor(steps, dtype=coordinates.dtype)[:len(coordinates) - 2] * self.stds[around][moved]
        return (self.origin + self.basis @ coordinates).float()


class Explorer:
    """The window: a scatter of the test codes per model (AE, VAE), a decoded image per model, the sliders,
    the view buttons, and the label buttons when a CVAE is there. click(u, v) and the widgets redraw it."""

    def __init__(self, figure, loaded, test_inputs, test_labels, class_names, view="z", point=(0.0, 0.0), around="prior"):
        self.figure, self.models, self.point, self.label, self.dragging = figure, loaded, tuple(point), 0, False
        self.around, self.background = around, None
        self.labels = test_labels.cpu()
        codes = {name: evaluate.codes_of(model, test_inputs, test_labels) for name, model in loaded.items()}
        self.views = {name: {kind: LatentView(codes[name], kind) for kind in VIEWS} for name in loaded}
        self.scatters, self.markers, self.images = {}, {}, {}
        for column, name in enumerate(["ae", "vae"]):
            ax = figure.add_axes([0.05 + 0.32 * column, 0.40, 0.27, 0.47])
            self.scatters[name] = ax.scatter([], [], s=2, alpha=0.5)
            self.markers[name], = ax.plot([], [], "k+", markersize=16, markeredgewidth=2)
        for column, name in enumerate(loaded):
            ax = figure.add_axes([0.70 + 0.15 * (column % 2), 0.69 - 0.30 * (column // 2), 0.13, 0.21])
            self.images[name] = ax.imshow(torch.zeros(28, 28).numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        self.sliders = [Slider(figure.add_axes([0.12, 0.27 - 0.055 * k, 0.45, 0.035]), "", -3.0, 3.0, valinit=0.0)
                        for k in range(SLIDERS)]
        self.view_buttons = RadioButtons(figure.add_axes([0.70, 0.15, 0.27, 0.08]), list(VIEWS.values()),
                                         active=list(VIEWS).index(view))
        self.around_buttons = RadioButtons(figure.add_axes([0.70, 0.05, 0.27, 0.08]), list(AROUND.values()),
                                           active=list(AROUND).index(around))
        self.label_buttons = None
        if "cvae" in loaded:
            self.label_buttons = RadioButtons(figure.add_axes([0.86, 0.30, 0.09, 0.30]), [str(k) for k in range(len(class_names))])
            self.label_buttons.on_clicked(self.choose_label)
        for slider in self.sliders:
            slider.on_changed(lambda _: self.redraw())
        self.view_buttons.on_clicked(lambda text: self.show_view(next(kind for kind, name in VIEWS.items() if name == text)))
        self.around_buttons.on_clicked(self.choose_around)
        figure.legend(handles=figures.class_markers(class_names), loc="upper center", bbox_to_anchor=(0.345, 1.0),
                      ncol=5, fontsize=9, title="each test code is coloured by its image's class", title_fontsize=9)
        figure.text(0.05, 0.03, HOW_Z_IS_MADE, fontsize=9)
        figure.canvas.mpl_connect("button_press_event", self.on_press)
        figure.canvas.mpl_connect("motion_notify_event", self.on_drag)
        figure.canvas.mpl_connect("button_release_event", self.on_release)
        self.show_view(view)

    def latent(self, name):
        """The z that the current point and sliders give in this model's latent space."""
        return self.views[name][self.view].latent(self.point, [slider.val for slider in self.sliders], self.around)

    @torch.no_grad()
    def decoded(self, name):
        """model.decode of latent(name), with the chosen label for the CVAE: one 28x28 image."""
        model = self.models[name]
        label = torch.tensor([self.label]) if name == "cvae" else None
        return model.decode(self.latent(name)[None].to(next(model.parameters()).device), label)[0, 0].cpu()

    def click(self, u, v):
        self.point = (float(u), float(v))
        self.redraw()

    def on_press(self, event):
        """A left click inside either scatter moves the point there; dragging moves it on."""
        if event.button == 1 and any(event.inaxes is scatter.axes for scatter in self.scatters.values()):
            self.dragging = True
            self.click(event.xdata, event.ydata)

    def on_drag(self, event):
        if self.dragging and any(event.inaxes is scatter.axes for scatter in self.scatters.values()):
            self.click(event.xdata, event.ydata)

    def on_release(self, event):
        self.dragging = False

    def choose_around(self, text):
        self.around = next(kind for kind, name in AROUND.items() if name == text)
        self.redraw()

    def choose_label(self, text):
        self.label = int(text)
        self.redraw()

    def show_view(self, view):
        """Re-plot the codes in this view; the point keeps its coordinates."""
        self.view = view
        for name, scatter in self.scatters.items():
            points = self.views[name][view].points
            scatter.set_offsets(points.numpy())
            scatter.set_color(colormaps["tab10"](self.labels.numpy()))
            low, high = points.quantile(0.001, dim=0), points.quantile(0.999, dim=0)
            margin = 0.1 * (high - low)
            scatter.axes.set_xlim(float(low[0] - margin[0]), float(high[0] + margin[0]))
            scatter.axes.set_ylim(float(low[1] - margin[1]), float(high[1] + margin[1]))
            scatter.axes.set_xlabel(self.views[name][view].names[0])
            scatter.axes.set_ylabel(self.views[name][view].names[1])
            scatter.axes.set_title(f"{name.upper()}: test codes, {VIEWS[view]}; click anywhere", fontsize=10)
        names = self.views["ae"][view].names
        for k, slider in enumerate(self.sliders):
            slider.label.set_text(names[2 + k] if 2 + k < len(names) else "")
        self.update()
        self.figure.canvas.draw_idle()  # the scatters changed: a full redraw

    def update(self):
        """Move the markers to the point, and decode it into the image panels."""
        for marker in self.markers.values():
            marker.set_data([self.point[0]], [self.point[1]])
        for name, image in self.images.items():
            image.set_data(self.decoded(name).numpy())
            label = f" as {self.label}" if name == "cvae" else ""
            image.axes.set_title(f"{name.upper()} decodes{label}\n({self.point[0]:.2f}, {self.point[1]:.2f})", fontsize=10)

    def redraw(self):
        self.update()
        if self.background is None:
            self.figure.canvas.draw_idle()
        else:
            self.draw_changes()

    def use_blitting(self):
        """In a window, redraw only what a click changes (markers, decoded images, their titles) over a saved
        picture of the rest: redrawing 20,000 points and sending the whole window to the screen takes ~0.35 s."""
        self.changing = [*self.markers.values(), *self.images.values(), *(image.axes.title for image in self.images.values())]
        for artist in self.changing:
            artist.set_animated(True)  # left out of full redraws, drawn by draw_changes
        self.figure.canvas.mpl_connect("draw_event", self.save_background)

    def save_background(self, event):
        self.background = self.figure.canvas.copy_from_bbox(self.figure.bbox)
        self.draw_changes()

    def draw_changes(self):
        canvas = self.figure.canvas
        canvas.restore_region(self.background)
        for artist in self.changing:
            self.figure.draw_artist(artist)
        panels = Bbox.union([image.axes.bbox for image in self.images.values()])
        titles = Bbox.from_extents(panels.x0, panels.y0, panels.x1, panels.y1 + self.figure.dpi / 2)  # 2 lines of title
        for region in [titles, *(scatter.axes.bbox for scatter in self.scatters.values())]:
            canvas.blit(region)


def load_explorer(figure, args):
    """The checkpoints (the same checks and one-line errors as evaluate.py), the test split, and the explorer."""
    loaded, checkpoints = evaluate.load_models(args.out_dir, torch.device("cpu"))
    _, test_labels, test_inputs = evaluate.load_split(checkpoints["vae"], args.data_dir, False, "cpu")
    classes = train.DATASETS[checkpoints["vae"]["dataset"]].classes
    return Explorer(figure, loaded, test_inputs, test_labels, classes, args.view, args.point, args.around)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data-dir", default="data", help="holds MNIST/raw/ (the test split's codes are shown)")
    parser.add_argument("--out-dir", default="results", help="holds ae.pt and vae.pt (and cvae.pt)")
    parser.add_argument("--view", default="z", choices=sorted(VIEWS), help="z: z0 against z1; pca: the top two principal directions")
    parser.add_argument("--around", default="prior", choices=sorted(AROUND),
                        help="the other coordinates of z: at 0, the prior's centre, or at the codes' mean")
    parser.add_argument("--point", type=float, nargs=2, default=[0.0, 0.0], metavar=("U", "V"), help="the point decoded first")
    parser.add_argument("--save", metavar="FILE", help="write the view to this PNG instead of opening a window")
    args = parser.parse_args(argv)
    if args.save:
        figure = Figure(figsize=(13, 8))
        load_explorer(figure, args)
        train.write_atomically(args.save, lambda temporary: figure.savefig(temporary, dpi=100))
        print(f"wrote {args.save}")
        return
    evaluate.load_models(args.out_dir, torch.device("cpu"))  # checkpoint errors first, before any window
    import matplotlib.pyplot as plt  # picks a window toolkit, or none on a machine without a display
    figure = plt.figure(figsize=(13, 8))
    if figure.canvas.required_interactive_framework is None:
        train.fail(f"no display to open a window on (matplotlib's backend is {plt.get_backend()}); "
                   f"write the same view to a file: python explore.py --save explore.png")
    load_explorer(figure, args).use_blitting()
    plt.show()


if __name__ == "__main__":
    train.run(main)
