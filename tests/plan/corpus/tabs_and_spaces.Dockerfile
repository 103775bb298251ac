FROM	alpine:3.20
	RUN	echo tabbed \
		&& echo more
   WORKDIR   /tmp   
ENV A=1	B=2
